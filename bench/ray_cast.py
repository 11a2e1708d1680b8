"""Rays alone: meshrender's BVH walk against Mitsuba 3's ray casting, on the same rays, in one run.

bench/kernel_speed.py compares whole renders. This splits off the part that is ray casting: the
same scenes (kernel_speed.write_scenes), the same rays, no shading. The rays are made here with
numpy and saved for both sides: origins uniform in the scene's box (shrunk by 2%), directions
uniform on the sphere (incoherent, as bounce rays are); and shadow segments between two such
points. Each side runs in its own process on THREADS threads and first casts once untimed
(Taichi's and Dr.Jit's kernels compile or load), then the timed casts alternate, `--repeats`
times; the best of each is reported as Mrays/s, and meshrender / Mitsuba:
  * closest: meshrender's `intersect` (any_hit 0) against Mitsuba's
    `Scene.ray_intersect_preliminary` (the hit distance and primitive, no surface interaction);
  * any-hit: `intersect` with any_hit 1 over each segment against `Scene.ray_test`.
Both sides' answers are checked against each other: hit or miss, and the distances. The Python
that has Mitsuba needs numpy beside it (`pip install mitsuba numpy`).

    DRJIT_LIBLLVM_PATH=/usr/lib/x86_64-linux-gnu/libLLVM-19.so \\
        .venv/bin/python bench/ray_cast.py [--rays 2097152] [--repeats 5] [--only cornell bunny]
"""

# no "from __future__ import annotations": Taichi reads the kernels' annotations as objects

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from kernel_speed import THREADS, Side, alternate, write_scenes  # noqa: E402

sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != HERE] + [str(HERE)]

SCENES = ["cornell", "bunny", "glass_mesh"]

MITSUBA_CAST = r"""
import json, sys, time
import numpy as np
import drjit as dr, mitsuba as mi
mi.set_variant("llvm_ad_rgb")
dr.set_thread_count(int(sys.argv[2]))
scene = mi.load_file(sys.argv[1])
rays = np.load(sys.argv[3])
def ray(cols):
    o, d, tmax = rays[:, cols[0]:cols[0] + 3], rays[:, cols[0] + 3:cols[0] + 6], rays[:, cols[0] + 6]
    r = mi.Ray3f(o=mi.Point3f(*(mi.Float(np.ascontiguousarray(o[:, k])) for k in range(3))),
                 d=mi.Vector3f(*(mi.Float(np.ascontiguousarray(d[:, k])) for k in range(3))))
    r.maxt = mi.Float(np.ascontiguousarray(tmax))
    dr.eval(r)
    return r
closest, segment = ray([0]), ray([7])
def cast():
    t0 = time.perf_counter()
    pi = scene.ray_intersect_preliminary(closest, coherent=False)
    dr.eval(pi.t)
    dr.sync_thread()
    t1 = time.perf_counter()
    hit = scene.ray_test(segment, coherent=False)
    dr.eval(hit)
    dr.sync_thread()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, np.array(pi.t), np.array(hit)
_, _, t, hit = cast()
np.save(sys.argv[4], np.stack([t, hit.astype(np.float32)], axis=1))
print(json.dumps({"ready": 1}), flush=True)
for _ in sys.stdin:
    a, b, _, _ = cast()
    print(json.dumps({"closest_s": a, "any_hit_s": b}), flush=True)
"""

def meshrender_child(xml: str, threads: int, rays_file: str, checkout: str, out_file: str) -> None:
    """The meshrender side, in a process of its own (Taichi reads its kernels' source files, so
    this is a mode of this script rather than a `-c` string)."""
    sys.path.insert(0, checkout)
    from kernels.backend import init_backend

    init_backend("cpu", threads)
    import taichi as ti
    from taichi.math import vec3
    from traversal import walk_arrays

    from kernels.tracer import intersect

    _, dev, NODE_T, TRI_T = walk_arrays(xml)
    F32_2D = ti.types.ndarray(ti.f32, ndim=2)

    @ti.kernel
    def cast(nodes: NODE_T, tri_xf: TRI_T, rays: F32_2D, out: F32_2D):
        for i in range(rays.shape[0]):
            o = vec3(rays[i, 0], rays[i, 1], rays[i, 2])
            d = vec3(rays[i, 3], rays[i, 4], rays[i, 5])
            h = intersect(tri_xf, nodes, o, d, rays[i, 6], 0)
            out[i, 0] = h.t if h.tri >= 0 else ti.math.inf

    @ti.kernel
    def test(nodes: NODE_T, tri_xf: TRI_T, rays: F32_2D, out: F32_2D):
        for i in range(rays.shape[0]):
            o = vec3(rays[i, 7], rays[i, 8], rays[i, 9])
            d = vec3(rays[i, 10], rays[i, 11], rays[i, 12])
            out[i, 1] = 1.0 if intersect(tri_xf, nodes, o, d, rays[i, 13], 1).tri >= 0 else 0.0

    rays = np.load(rays_file)
    out = np.zeros((len(rays), 2), np.float32)

    def run():
        t0 = time.perf_counter()
        cast(dev["bvh_node"], dev["tri_xf"], rays, out)
        t1 = time.perf_counter()
        test(dev["bvh_node"], dev["tri_xf"], rays, out)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1

    run()
    np.save(out_file, out)
    print(json.dumps({"ready": 1}), flush=True)
    for _ in sys.stdin:
        a, b = run()
        print(json.dumps({"closest_s": a, "any_hit_s": b}), flush=True)


def make_rays(xml: Path, n: int, seed: int = 1) -> np.ndarray:
    """(n, 14) float32: closest-hit rays (o, d, t_max = inf), then shadow segments (o, d, length)."""
    from meshrender.scene.compile import compile_scene
    from meshrender.scene.load import load_scene

    p = compile_scene(load_scene(str(xml))).arrays["positions"].astype(np.float64)
    lo, hi = p.min(0), p.max(0)
    lo, hi = lo + 0.01 * (hi - lo), hi - 0.01 * (hi - lo)
    rng = np.random.default_rng(seed)
    rays = np.zeros((n, 14), np.float32)
    d = rng.normal(size=(n, 3))
    rays[:, 0:3] = rng.uniform(lo, hi, (n, 3))
    rays[:, 3:6] = d / np.linalg.norm(d, axis=1, keepdims=True)
    rays[:, 6] = np.inf
    a, b = rng.uniform(lo, hi, (n, 3)), rng.uniform(lo, hi, (n, 3))
    seg = b - a
    length = np.linalg.norm(seg, axis=1)
    rays[:, 7:10] = a
    rays[:, 10:13] = seg / length[:, None]
    rays[:, 13] = length
    return rays


def bench_scene(name: str, xml: Path, work: Path, args) -> dict:
    rays_file = work / f"{name}.rays.npy"
    rays = make_rays(xml, args.rays)
    np.save(rays_file, rays)
    env = {**os.environ, "DRJIT_LIBLLVM_PATH": os.environ.get("DRJIT_LIBLLVM_PATH", args.libllvm)}
    theirs_out, ours_out = work / f"{name}.mitsuba.npy", work / f"{name}.meshrender.npy"
    files = [str(xml), str(THREADS), str(rays_file)]
    mi = Side([args.mitsuba_python, "-c", MITSUBA_CAST, *files, str(theirs_out)], env, "Mitsuba")
    ours = Side([sys.executable, __file__, "--child", *files, str(REPO), str(ours_out)], env, "meshrender")
    theirs_runs, ours_runs = alternate(mi, ours, args.repeats)
    a, b = np.load(ours_out), np.load(theirs_out)
    hit_a, hit_b = np.isfinite(a[:, 0]), np.isfinite(b[:, 0])
    both = hit_a & hit_b
    rel = np.abs(a[both, 0] - b[both, 0]) / np.maximum(b[both, 0], 1e-6)
    rec = {"scene": name, "rays": len(rays)}
    for kind in ("closest", "any_hit"):
        best_ours = min(r[f"{kind}_s"] for r in ours_runs)
        best_theirs = min(r[f"{kind}_s"] for r in theirs_runs)
        rec[f"{kind}_meshrender_Mrays_s"] = round(len(rays) / best_ours / 1e6, 2)
        rec[f"{kind}_mitsuba_Mrays_s"] = round(len(rays) / best_theirs / 1e6, 2)
        rec[f"{kind}_ratio"] = round(best_theirs / best_ours, 3)
    rec["closest_hit_share"] = round(float(hit_a.mean()), 4)
    rec["closest_hit_or_miss_agree"] = round(float((hit_a == hit_b).mean()), 6)
    rec["closest_t_rel_diff_p99"] = round(float(np.percentile(rel, 99)), 7) if len(rel) else None
    rec["any_hit_share"] = round(float(a[:, 1].mean()), 4)
    rec["any_hit_agree"] = round(float((a[:, 1] == b[:, 1]).mean()), 6)
    return rec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rays", type=int, default=2**21)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", nargs="*", choices=SCENES)
    ap.add_argument("--mitsuba-python", help="a Python with pip mitsuba and numpy (default: "
                    "$MESHRENDER_MITSUBA_PYTHON, else ../mitsuba-venv/bin/python beside the checkout)",
                    default=os.environ.get("MESHRENDER_MITSUBA_PYTHON",
                                           str(REPO.parent / "mitsuba-venv" / "bin" / "python")))  # fmt: skip
    ap.add_argument("--libllvm", default="/usr/lib/x86_64-linux-gnu/libLLVM-19.so")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)  # the meshrender side's own process
    args = ap.parse_args()
    if args.child:
        xml, threads, rays_file, checkout, out_file = args.child
        meshrender_child(xml, int(threads), rays_file, checkout, out_file)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        scenes = write_scenes(work, args.only or SCENES)
        for name, xml in scenes.items():
            print(json.dumps(bench_scene(name, xml, work, args)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
