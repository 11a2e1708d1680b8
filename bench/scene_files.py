"""Where the benchmarks find their scenes, and what to do when one is not there.

The benchmark scenes are bigger than the repository should carry, so they live in a folder
beside the checkout, `../shared/scenes` (or wherever `$MESHRENDER_BENCH_SCENES` points), laid out
as below. `scene_file("bunny/bunny.ply")` returns the path, or ends the benchmark with one message
naming the file that is missing, where to get it and where to put it (exit status 2, no
traceback). The tests never read this folder: they use tests/data.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCENES = Path(os.environ.get("MESHRENDER_BENCH_SCENES") or REPO.parent / "shared" / "scenes")

WHERE = {
    "bunny/bunny.ply": (
        "the Stanford bunny, 69,451 triangles, binary PLY (1.3 MB). The tests carry the same file: "
        "copy tests/data/bunny/bunny.ply (its ORIGIN.md says where it came from: mitsuba-data "
        "common/meshes/bunny.ply, from the Stanford 3D Scanning Repository). The 1.1M-triangle "
        "bunny is made from it in memory (bench/store.py subdivide), nothing to fetch"
    ),
    "flight_helmet_gltf/glTF/FlightHelmet.gltf": (
        "the Khronos FlightHelmet sample (CC0, 18 MB: FlightHelmet.gltf, FlightHelmet.bin and 15 PNG "
        "textures side by side): github.com/KhronosGroup/glTF-Sample-Assets, "
        "Models/FlightHelmet/glTF/, the whole folder"
    ),
}


def scene_file(rel: str) -> Path:
    """SCENES / rel when it is there; otherwise exit 2 saying where to find it."""
    path = SCENES / rel
    if path.is_file():
        return path
    print(
        f"bench: scene file {path} is missing.\n"
        f"  It is {WHERE.get(rel, 'a benchmark scene')}.\n"
        f"  Put it at {path}, or set MESHRENDER_BENCH_SCENES to a folder that holds {rel}.",
        file=sys.stderr,
    )
    raise SystemExit(2)
