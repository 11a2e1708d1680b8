"""meshrender against Mitsuba 3 on the same Mitsuba XML files, the same cores, in one run.

How: the scenes are written as Mitsuba XML into a work folder (the Cornell box of
tests/data/cornell_mitsuba at 256x256, depth 8; the 69k-triangle bunny in that box in place
of its two blocks; the bunny midpoint-subdivided twice, 1.1M triangles, in the same box; the
rough glass sphere of tests/data/mitsuba at 256x256, and the same with the sphere as the 20,480
triangles meshrender makes of it, since Mitsuba intersects a `sphere` exactly), and both
renderers read those files:
Mitsuba's `llvm_ad_rgb` on THREADS threads in a subprocess of the Python that has pip mitsuba
(`--mitsuba-python`), meshrender in a subprocess of this Python on the CPU backend with THREADS
threads and a warm kernel cache (one process per renderer and scene, so each peak RSS is that
renderer's own, not the scene writing's or another scene's). For each scene both first render
once untimed (Dr.Jit's and Taichi's kernels compile or load from their caches), then the timed
runs alternate, Mitsuba then meshrender, `--repeats` times; the best of each is reported, as
Msamples/s (width x height x spp / s) and meshrender/Mitsuba. Besides: Taichi kernel compile
time, cold (empty offline cache, a fresh process) and warm (from the disk cache), the host BVH
build for the 1.1M triangles, and peak memory (VmHWM of each renderer's process).

    DRJIT_LIBLLVM_PATH=/usr/lib/x86_64-linux-gnu/libLLVM-19.so \\
        .venv/bin/python bench/kernel_speed.py [--spp 64] [--repeats 3] [--only cornell bunny ...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from render import kernel_compile_s  # noqa: E402
from scene_files import scene_file  # noqa: E402
from store import subdivide  # noqa: E402

# the repo's packages first (this file is not called kernels.py for that reason: Python puts a
# script's folder first on the path, and bench/kernels.py shadowed the `kernels` package for
# every script in bench/ that renders)
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != HERE] + [str(HERE)]

THREADS = 2  # the comparison: both renderers on the same two cores
CORNELL = REPO / "tests" / "data" / "cornell_mitsuba"
GLASS = REPO / "tests" / "data" / "mitsuba" / "rough_glass.xml"
BUNNY_PLACE = '<scale value="6.5"/><translate x="0.1" y="-1.22" z="0"/>'  # on the floor, mid-box

MITSUBA_RUN = r"""
import json, sys, time
import drjit as dr, mitsuba as mi
mi.set_variant("llvm_ad_rgb")
dr.set_thread_count(int(sys.argv[2]))
scene = mi.load_file(sys.argv[1])
spp, repeats = int(sys.argv[3]), int(sys.argv[4])
def once():
    t = time.perf_counter()
    img = mi.render(scene, spp=spp)
    dr.eval(img)
    dr.sync_thread()
    return time.perf_counter() - t
first = once()
print(json.dumps({"ready": first}), flush=True)
for _ in range(repeats):
    line = sys.stdin.readline()  # the parent says when: runs alternate with meshrender's
    if not line:
        break
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
    print(json.dumps({"seconds": once(), "first_s": first, "max_rss_mb": int(hwm) / 1024}), flush=True)
"""


def write_scenes(work: Path, only: list[str] | None) -> dict[str, Path]:
    """The benchmark's XML files (and the meshes they name) under `work`."""
    shutil.copytree(CORNELL / "meshes", work / "meshes")
    box = (CORNELL / "cornell_box_boxfilter.xml").read_text()
    scenes = {"cornell": work / "cornell.xml"}
    scenes["cornell"].write_text(box)
    no_blocks = re.sub(r'\s*<shape type="obj" id="(small|large)-box">.*?</shape>', "", box)

    def bunny_in_box(name: str, ply: str) -> Path:
        shape = (
            f'    <shape type="ply" id="bunny"><string name="filename" value="{ply}"/>'
            f'<transform name="to_world">{BUNNY_PLACE}</transform><ref id="white"/></shape>\n</scene>'
        )
        path = work / f"{name}.xml"
        path.write_text(no_blocks.replace("</scene>", shape))
        return path

    want = lambda n: only is None or n in only  # noqa: E731
    if want("bunny"):
        shutil.copy(scene_file("bunny/bunny.ply"), work / "bunny.ply")
        scenes["bunny"] = bunny_in_box("bunny", "bunny.ply")
    if want("bunny_1m"):
        write_bunny_1m(work / "bunny_1m.ply")
        scenes["bunny_1m"] = bunny_in_box("bunny_1m", "bunny_1m.ply")
    glass = re.sub(r'name="res" value="\d+"', 'name="res" value="256"', GLASS.read_text())
    if want("glass"):
        scenes["glass"] = work / "glass.xml"
        scenes["glass"].write_text(glass)
    if want("glass_mesh"):  # the same, the sphere as the triangles meshrender makes of it: like for like
        scenes["glass_mesh"] = work / "glass_mesh.xml"
        scenes["glass_mesh"].write_text(glass_as_mesh(glass, work / "glass_sphere.ply"))
    return {k: v for k, v in scenes.items() if want(k)}


def glass_as_mesh(xml: str, ply: Path) -> str:
    """The glass scene with its analytic `sphere` (which Mitsuba intersects exactly) replaced by
    the icosphere meshrender's importer renders it as (20,480 triangles, with its normals)."""
    from plyfile import PlyData, PlyElement

    from meshrender.scene.mitsuba import _sphere

    m = re.search(r'<shape type="sphere" id="sphere">\s*<point name="center" x="([^"]+)" y="([^"]+)" '
                  r'z="([^"]+)"/>\s*<float name="radius" value="([^"]+)"/>', xml)  # fmt: skip
    mesh = _sphere(np.array([float(m[1]), float(m[2]), float(m[3])]), float(m[4]))
    verts = np.zeros(len(mesh.positions), dtype=[(k, "f4") for k in ("x", "y", "z", "nx", "ny", "nz")])
    for k, col in zip(("x", "y", "z"), mesh.positions.T, strict=True):
        verts[k] = col
    for k, col in zip(("nx", "ny", "nz"), mesh.normals.T, strict=True):
        verts[k] = col
    faces = np.array([(tuple(f),) for f in mesh.indices], dtype=[("vertex_indices", "i4", (3,))])
    PlyData([PlyElement.describe(verts, "vertex"), PlyElement.describe(faces, "face")]).write(str(ply))
    return xml.replace(m[0], f'<shape type="ply" id="sphere"><string name="filename" value="{ply.name}"/>')


def write_bunny_1m(path: Path) -> None:
    from plyfile import PlyData, PlyElement

    from meshrender.scene.ply import load_ply

    mesh = load_ply(scene_file("bunny/bunny.ply"))
    p, f = mesh.positions, mesh.indices
    for _ in range(2):
        p, f = subdivide(p, f)
    verts = np.array([tuple(v) for v in p], dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    faces = np.empty(len(f), dtype=[("vertex_indices", "i4", (3,))])
    faces["vertex_indices"] = f
    PlyData([PlyElement.describe(verts, "vertex"), PlyElement.describe(faces, "face")]).write(str(path))


MESHRENDER_RUN = r"""
import json, sys, time
sys.path.insert(0, sys.argv[4])
import msgspec
from meshrender.render import Renderer, render_frame
from meshrender.scene.compile import compile_scene
from meshrender.scene.load import load_scene
from meshrender.units import whole_frame_unit
t0 = time.perf_counter()
scene = compile_scene(load_scene(sys.argv[1]))
load_s = time.perf_counter() - t0
settings = msgspec.structs.replace(scene.settings, spp=int(sys.argv[3]), pass_spp=int(sys.argv[3]))
r = Renderer(scene, backend="cpu", threads=int(sys.argv[2]))
r.warm_up()
def once():
    t = time.perf_counter()
    render_frame(r, settings, units=[whole_frame_unit(settings)])
    return time.perf_counter() - t
first = once()  # untimed: the first launch on this scene
info = {"triangles": scene.triangle_count, "resolution": [settings.width, settings.height],
        "spp": settings.spp, "max_depth": settings.max_depth, "load_compile_scene_s": load_s}
print(json.dumps({"ready": first}), flush=True)
for line in sys.stdin:  # the parent says when: runs alternate with Mitsuba's
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
    rec = {"seconds": once(), "first_s": first, "max_rss_mb": int(hwm) / 1024, **info}
    print(json.dumps(rec), flush=True)
"""


class Side:
    """One renderer in its own process: it loads the scene and renders once (untimed; the
    constructor waits for that, so the two sides never overlap), then renders once more for each
    `run()`, and answers with a JSON line (seconds, its peak RSS)."""

    def __init__(self, argv: list[str], env: dict[str, str], name: str):
        self.name = name
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self._answer()  # {"ready"}: its load and first render are over before the other side starts

    def run(self) -> dict:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return self._answer()

    def _answer(self) -> dict:
        line = self.proc.stdout.readline()
        while line and not line.startswith("{"):  # the renderer's own log lines
            line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"bench: the {self.name} process ended early (exit {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def alternate(first: Side, second: Side, repeats: int) -> tuple[list[dict], list[dict]]:
    """`repeats` runs of each side, alternating (first, then second), then both closed."""
    a, b = [], []
    for _ in range(repeats):
        a.append(first.run())
        b.append(second.run())
    first.close()
    second.close()
    return a, b


def bench_scene(name: str, xml: Path, args) -> dict:
    """Mitsuba and meshrender each in a process of their own (so each one's peak RSS is its own),
    the timed runs alternating."""
    env = {**os.environ, "DRJIT_LIBLLVM_PATH": os.environ.get("DRJIT_LIBLLVM_PATH", args.libllvm)}
    spp, reps = str(args.spp), str(args.repeats)
    mi = Side([args.mitsuba_python, "-c", MITSUBA_RUN, str(xml), str(THREADS), spp, reps], env, "Mitsuba")
    me = [sys.executable, "-c", MESHRENDER_RUN, str(xml), str(THREADS), spp, str(REPO)]
    ours = Side(me, env, "meshrender")
    theirs, mine = alternate(mi, ours, args.repeats)
    rec = mine[-1]
    samples = rec["resolution"][0] * rec["resolution"][1] * rec["spp"]
    best_ours, best_theirs = min(r["seconds"] for r in mine), min(r["seconds"] for r in theirs)
    ms_ours, ms_theirs = samples / best_ours / 1e6, samples / best_theirs / 1e6
    return {
        "scene": name,
        "triangles": rec["triangles"],
        "resolution": rec["resolution"],
        "spp": rec["spp"],
        "max_depth": rec["max_depth"],
        "meshrender_Msamples_s": round(ms_ours, 3),
        "mitsuba_Msamples_s": round(ms_theirs, 3),
        "ratio": round(ms_ours / ms_theirs, 3),
        "meshrender_runs_s": [round(r["seconds"], 3) for r in mine],
        "mitsuba_runs_s": [round(r["seconds"], 3) for r in theirs],
        "meshrender_first_render_s": round(rec["first_s"], 3),
        "mitsuba_first_render_s": round(theirs[-1]["first_s"], 3),
        "meshrender_load_compile_scene_s": round(rec["load_compile_scene_s"], 3),
        "meshrender_max_rss_mb": round(rec["max_rss_mb"], 1),
        "mitsuba_max_rss_mb": round(theirs[-1]["max_rss_mb"], 1),
    }


def bvh_build_s(ply: Path, repeats: int) -> dict:
    """The host BVH build for the mesh: bench/bvh.py's timing (best of `repeats`, wall and CPU)
    when it is there, else timed here the same way."""
    import meshrender.bvh
    from meshrender.scene.ply import load_ply

    m = load_ply(ply)
    p = m.positions[m.indices.astype(np.int64)]
    tris = tuple(np.ascontiguousarray(p[:, k]) for k in range(3))  # as scene.compile passes them
    try:
        from bvh import time_builds  # bench/bvh.py, the BVH work's own benchmark

        _, wall, cpu = time_builds({"meshrender": meshrender.bvh}, tris, repeats)["meshrender"]
    except ImportError:
        wall = cpu = float("inf")
        for _ in range(repeats):
            c0, t0 = time.process_time(), time.perf_counter()
            meshrender.bvh.build_bvh(*tris)
            wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    return {
        "bvh_build_triangles": len(m.indices),
        "bvh_build_s": round(wall, 2),
        "bvh_build_cpu_s": round(cpu, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spp", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", nargs="*", default=None,
                    help="cornell, bunny, bunny_1m, glass, glass_mesh (default: all)")  # fmt: skip
    ap.add_argument("--mitsuba-python", help="a Python with mitsuba 3.9.1 (default: "
                    "$MESHRENDER_MITSUBA_PYTHON, else ../mitsuba-venv/bin/python beside the checkout)",
                    default=os.environ.get("MESHRENDER_MITSUBA_PYTHON",
                                           str(REPO.parent / "mitsuba-venv" / "bin" / "python")))  # fmt: skip
    ap.add_argument("--libllvm", default="/usr/lib/x86_64-linux-gnu/libLLVM-19.so")
    ap.add_argument("--no-compile-times", action="store_true", help="skip the cold/warm kernel compile")
    args = ap.parse_args()
    if not Path(args.mitsuba_python).exists():
        print(f"bench: no mitsuba Python at {args.mitsuba_python} (mitsuba_refs.py)", file=sys.stderr)
        return 2
    if not args.no_compile_times:
        times = {}
        for whole, key in ((False, "kernel_compile"), (True, "kernel_compile_whole")):  # Cornell, all parts
            with tempfile.TemporaryDirectory() as cold:
                times[f"{key}_cold_s"] = round(kernel_compile_s(cold, THREADS, whole=whole), 2)
                times[f"{key}_warm_s"] = round(kernel_compile_s(cold, THREADS, whole=whole), 2)
        print(json.dumps(times), flush=True)
    with tempfile.TemporaryDirectory() as work:
        scenes = write_scenes(Path(work), args.only)
        for name, xml in scenes.items():
            print(json.dumps(bench_scene(name, xml, args)), flush=True)
        if "bunny_1m" in scenes:
            print(json.dumps(bvh_build_s(Path(work) / "bunny_1m.ply", args.repeats)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
