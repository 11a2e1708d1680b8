"""Render throughput on this machine, measured side by side in one run.

Prints kernel compile time cold (empty cache, in a fresh process) and warm (from Taichi's disk
cache; the median of WARM_RUNS fresh processes) for the Cornell box's kernel (the parts it uses:
kernels/features.py) and for the whole tracer (every part, what a scene using all of them gets),
the two alternating; then, for the built-in Cornell box and the 69k-triangle bunny, scene
compile time, and samples per second when the frame is one unit against 64 px and 32 px
buckets x passes (the split a party uses), with the ratio that the split costs.
`--unpatched` measures the kernel compile times also without kernels/taichi_patches.py (Taichi's
own frontend), the two alternating, `--rounds` times each. Run:
python bench/render.py [--spp N] [--threads N] [--unpatched] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from meshrender.render import Renderer, render_frame
from meshrender.scene.compile import compile_scene
from meshrender.scene.load import load_scene
from meshrender.units import frame_units, whole_frame_unit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scene_files import scene_file  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

WARM_RUNS = 3  # warm starts per measurement: one process is noisy on a shared 2-core machine
COLD = """
import time, sys
if sys.argv[2] == "unpatched":
    import kernels.taichi_patches
    kernels.taichi_patches.apply = lambda: ()  # Taichi's own frontend
from meshrender.render import Renderer
from meshrender.scene.compile import compile_scene
from meshrender.scene.load import load_scene
r = Renderer(compile_scene(load_scene("cornell")), backend="cpu", threads=int(sys.argv[1]))
if sys.argv[3] == "whole":
    from kernels.features import F_ALL
    r.features = F_ALL
print(r.warm_up())
"""


def kernel_compile_s(cache_dir: str, threads: int, *, patched: bool = True, whole: bool = False) -> float:
    """Seconds Renderer.warm_up takes in a fresh process with `cache_dir` as its kernel cache
    (cold when empty; the process writes the cache when it exits)."""
    env = {**os.environ, "MESHRENDER_CACHE": cache_dir}
    out = subprocess.run(
        [sys.executable, "-c", COLD, str(threads), "patched" if patched else "unpatched",
         "whole" if whole else "scene"],  # fmt: skip
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def cold_and_warm_s(threads: int, *, patched: bool = True, whole: bool = False) -> tuple[float, float]:
    """(cold, median warm of WARM_RUNS) kernel compile seconds, in a fresh cache folder."""
    with tempfile.TemporaryDirectory() as cache:
        cold = kernel_compile_s(cache, threads, patched=patched, whole=whole)
        warm = [kernel_compile_s(cache, threads, patched=patched, whole=whole) for _ in range(WARM_RUNS)]
    return cold, statistics.median(warm)


def bench_scene(spec: str, spp: int, threads: int, res: int) -> dict:
    t0 = time.perf_counter()
    loaded = load_scene(spec)
    t1 = time.perf_counter()
    scene = compile_scene(loaded)
    t2 = time.perf_counter()
    r = Renderer(scene, backend="cpu", threads=threads)
    r.warm_up()
    s = msgspec.structs.replace(scene.settings, spp=spp, pass_spp=max(1, spp // 4), width=res, height=res)
    row = {"scene": spec, "triangles": scene.triangle_count, "load_s": t1 - t0, "compile_scene_s": t2 - t1}
    for label, units in (
        ("whole_frame", [whole_frame_unit(s)]),
        ("buckets64", frame_units(s, bucket_px=64)),
        ("buckets32", frame_units(s, bucket_px=32)),
    ):
        t = time.perf_counter()
        render_frame(r, s, units=units)
        dt = time.perf_counter() - t
        row[f"{label}_Msamples_s"] = s.width * s.height * s.spp / dt / 1e6
        row[f"{label}_units"] = len(units)
    row["split64_cost_ratio"] = row["whole_frame_Msamples_s"] / row["buckets64_Msamples_s"]
    row["split32_cost_ratio"] = row["whole_frame_Msamples_s"] / row["buckets32_Msamples_s"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spp", type=int, default=32)
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--unpatched", action="store_true", help="also time Taichi's own frontend")
    ap.add_argument("--rounds", type=int, default=1, help="kernel compile measurements of each kind")
    args = ap.parse_args()
    bunny = scene_file("bunny/bunny.ply")  # before the kernel timings: say at once if it is missing
    # (patched, whole tracer)
    kinds = [(True, False), (True, True)] + ([(False, False), (False, True)] if args.unpatched else [])
    times: dict[tuple[bool, bool], list[tuple[float, float]]] = {k: [] for k in kinds}
    for n in range(args.rounds):
        for patched, whole in kinds if n % 2 == 0 else kinds[::-1]:  # alternating: drift hits all alike
            times[patched, whole].append(cold_and_warm_s(args.threads, patched=patched, whole=whole))
    for (patched, whole), runs in times.items():
        cold_s = statistics.median(c for c, _ in runs)
        warm_s = statistics.median(w for _, w in runs)
        label = "the whole tracer" if whole else "the Cornell box's"
        label += "" if patched else ", Taichi's own frontend"
        print(f"kernel compile ({label}): cold {cold_s:.2f} s, from disk cache {warm_s:.2f} s "
              f"(medians of {len(runs)} x {WARM_RUNS} warm)")  # fmt: skip
    for spec in ["cornell", str(bunny)]:
        row = bench_scene(spec, args.spp, args.threads, args.res)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))


if __name__ == "__main__":
    main()
