"""Rays per second of the kernel's own BVH walk (kernels.tracer.intersect), nothing else around it.

Each pixel of a 256x256 camera over the scene traces --spp samples of a camera ray and up to three
cosine-weighted bounces off the geometric normal (no materials, lights or shadow rays), so the
figure is the traversal and triangle test, plus a little ray set-up that is the same for both
sides. Scenes: the Cornell box (36 triangles), the 69k-triangle bunny in it, and the glass scene's
sphere as 20,480 triangles (bench/kernel_speed.py writes them). With --against DIR the same
kernel driver runs on DIR's meshrender and kernels too (another checkout: a git worktree of an
earlier commit), in alternating child processes, and the ratio is printed: how a change to the
tree or the walk is measured (issue 16's notes). CPU backend, --threads threads (default 1: the
least noisy on a shared machine), best of --repeats.

    python bench/traversal.py [--against ../base] [--spp 8] [--repeats 8] [--rounds 3]
    python bench/traversal.py --ir [--against ../base]   # how wide LLVM vectorised the walk
"""

import argparse  # no "from __future__ import annotations": Taichi reads the kernel's annotations
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def child(checkout: str, threads: int, spp: int, repeats: int, scenes: list[str], ir: bool = False) -> None:
    """Time the walk of `checkout` (its kernels and meshrender first on the path) on `scenes`;
    prints one JSON line. A function in this file, not a -c string: Taichi reads kernel source.
    With `ir`, Taichi compiles afresh and writes its optimised LLVM IR, and the line also counts
    the walk kernel's vector operations (ir_counts)."""
    sys.path.insert(0, checkout)
    import numpy as np
    import taichi as ti

    from kernels.backend import init_backend

    if ir:  # Taichi writes the .ll files into the working directory
        os.chdir(tempfile.mkdtemp(prefix="traversal-ir-"))
        taichi_init = ti.init
        fresh = {"print_kernel_llvm_ir_optimized": True, "offline_cache": False}
        ti.init = lambda **kw: taichi_init(**{**kw, **fresh})
    init_backend("cpu", threads)
    from taichi.math import vec3

    from kernels.tracer import face_normal, intersect, onb, rand, sample_key, to_world

    W = H = 256
    out = {}
    for xml in scenes:
        ta, dev, NODE_T, TRI_T = walk_arrays(xml)

        @ti.kernel
        def trace(nodes: NODE_T, tri_xf: TRI_T, spp: ti.i32, rays: ti.types.ndarray(ti.i32, ndim=2)):
            for y, x in ti.ndrange(H, W):
                n = 0
                for s in range(spp):
                    key = sample_key(ti.u32(1), ti.u32(0), ti.u32(y * W + x), ti.u32(s))
                    o = vec3(0.0, 0.0, 3.9)  # the Cornell box's camera; the glass scene's is near it
                    d = vec3((x + rand(key, 0)) / W * 0.8 - 0.4, 0.4 - (y + rand(key, 1)) / H * 0.8, -1.0)
                    d = d.normalized()
                    for b in range(4):
                        h = intersect(tri_xf, nodes, o, d, 1e30, 0)
                        n += 1
                        if h.tri < 0:
                            break
                        ng = face_normal(tri_xf, h.tri)
                        if ng.dot(d) > 0:
                            ng = -ng
                        o = o + d * h.t + ng * 1e-4
                        u1, u2 = rand(key, 2 + 2 * b), rand(key, 3 + 2 * b)
                        t, s2 = onb(ng)
                        phi = 2.0 * 3.14159265 * u2
                        local = vec3(ti.sqrt(u1) * ti.cos(phi), ti.sqrt(u1) * ti.sin(phi), ti.sqrt(1.0 - u1))
                        d = to_world(local, t, s2, ng)
                rays[y, x] = n

        counts = np.zeros((H, W), np.int32)
        trace(dev["bvh_node"], dev["tri_xf"], 1, counts)  # compile
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            trace(dev["bvh_node"], dev["tri_xf"], spp, counts)
            best = min(best, time.perf_counter() - t0)
        out[xml] = {"rays": int(counts.sum()), "best_s": best, "nodes": len(ta["bvh_node"])}
    if ir:
        walks = [ll for ll in (f.read_text() for f in Path().glob("*.ll")) if "define void @trace_" in ll]
        out["ir"] = ir_counts(max(walks, key=len))  # not the uploads' copy kernels
        shutil.rmtree(os.getcwd())
    print(json.dumps(out))


def walk_arrays(xml: str):
    """The scene's traversal_arrays, each as a Taichi ndarray of one vector per row, and the
    kernel argument types of the nodes and the triangles: (arrays, ndarrays, NODE_T, TRI_T).
    Imports from whichever checkout is first on the path (the caller's)."""
    import taichi as ti

    from meshrender.render import traversal_arrays
    from meshrender.scene.compile import compile_scene
    from meshrender.scene.load import load_scene

    ta = traversal_arrays(compile_scene(load_scene(xml)).arrays)
    if "tri_pe" in ta:  # a checkout from before the triangle rows held a transform
        ta["tri_xf"] = ta.pop("tri_pe")
    dev = {}
    for k, a in ta.items():
        dev[k] = ti.ndarray(ti.types.vector(a.shape[1], ti.f32), shape=a.shape[:1])
        dev[k].from_numpy(a)
    NODE_T = ti.types.ndarray(ti.types.vector(ta["bvh_node"].shape[1], ti.f32), ndim=1)
    TRI_T = ti.types.ndarray(ti.types.vector(ta["tri_xf"].shape[1], ti.f32), ndim=1)
    return ta, dev, NODE_T, TRI_T


def ir_counts(ll: str) -> dict:
    """Vector arithmetic in a kernel's optimised LLVM IR: how wide LLVM's SLP pass made the walk.
    The box test is 8-wide (one lane a child: fsub / fmul / fcmp / select on <8 x float>) when it
    is as issue 16's notes describe; pairs (<2 x float>) and gathers are what a change that upset
    it looked like."""
    ops = ("fsub", "fmul", "fcmp", "select", "fdiv")
    lines = [line for line in ll.splitlines() if any(f" {op} " in line for op in ops)]
    return {
        "ops_8_wide": sum("<8 x float>" in line or "<8 x i1>" in line for line in lines),
        "ops_4_wide": sum("<4 x float>" in line or "<4 x i1>" in line for line in lines),
        "ops_2_wide": sum("<2 x float>" in line or "<2 x i1>" in line for line in lines),
        "gathers": ll.count("masked.gather"),
    }


def run_side(checkout: Path, scenes: list[Path], args) -> dict:
    argv = [sys.executable, __file__, "--child", str(checkout), "--threads", str(args.threads),
            "--spp", str(args.spp), "--repeats", str(args.repeats)]  # fmt: skip
    argv += ["--ir"] if args.ir else []
    out = subprocess.run(argv + [str(s) for s in scenes], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", type=Path, help="another checkout to time beside this one")
    ap.add_argument("--spp", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="alternations of the sides")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ir", action="store_true", help="count the walk kernel's 8-, 4- and 2-wide vector ops")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # a side's own process: the checkout it times
    ap.add_argument("scenes", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.threads, args.spp, args.repeats, args.scenes, args.ir)
        return 0
    sys.path[:0] = [str(REPO), str(HERE)]
    from kernel_speed import write_scenes

    sides = {"this": REPO} | ({"against": args.against.resolve()} if args.against else {})
    with tempfile.TemporaryDirectory() as work:
        scenes = write_scenes(Path(work), ["cornell", "bunny", "glass_mesh"])
        if args.ir:  # one compile per side, of the walk on the Cornell box: what LLVM made of it
            for side, checkout in sides.items():
                rec = run_side(checkout, [scenes["cornell"]], args)
                print(json.dumps({"side": side, **rec["ir"]}), flush=True)
            return 0
        best: dict[str, dict[str, dict]] = {side: {} for side in sides}
        for _ in range(args.rounds):
            for side, checkout in sides.items():
                for xml, rec in run_side(checkout, list(scenes.values()), args).items():
                    old = best[side].get(xml)
                    if old is None or rec["best_s"] < old["best_s"]:
                        best[side][xml] = rec
        for name, xml in scenes.items():
            row = {"scene": name}
            for side in sides:
                rec = best[side][str(xml)]
                row[f"{side}_Mrays_s"] = round(rec["rays"] / rec["best_s"] / 1e6, 3)
                row[f"{side}_nodes"] = rec["nodes"]
            if args.against:
                row["ratio"] = round(row["this_Mrays_s"] / row["against_Mrays_s"], 3)
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
