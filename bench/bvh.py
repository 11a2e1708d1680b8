"""BVH build time and tree quality, this build against a baseline, side by side in one run.

For the 69k-triangle bunny and the 1.1M-triangle one (the same bunny midpoint-subdivided twice, made
in memory as bench/store.py does): build time (best of --repeats, wall and process CPU, the two
builders alternating so that load from other work hits both alike), peak memory allocated, SAH
cost, node / leaf counts, mean leaf size and depth; then the render time of each tree with the
current kernel (CPU backend, same settings, alternating). The baseline is meshrender/bvh.py as
committed at --baseline (default: the commit before the Step 8 build work), read with `git show`,
so the comparison needs the git checkout.
Run: python bench/bvh.py [--repeats N] [--no-render] [--spp N] [--res N] [--threads N]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import msgspec
import numpy as np

REPO = Path(__file__).resolve().parent.parent
# The checkout's packages before this folder's scripts (a bench script named like a package would shadow it).
sys.path.insert(0, str(REPO))

import meshrender.bvh as bvh_now  # noqa: E402
import meshrender.scene.compile as scene_compile  # noqa: E402
from meshrender.scene.load import load_scene  # noqa: E402

sys.path.insert(1, str(Path(__file__).resolve().parent))
from scene_files import scene_file  # noqa: E402
from store import subdivide  # noqa: E402

sys.path.insert(0, str(REPO))  # again: store.py puts its folder first
BASELINE_REV = "083768a"  # scene.types contract commit: bvh.py as it was before the build got faster


def load_baseline(rev: str):
    """meshrender/bvh.py at `rev`, as a module of its own."""
    try:
        src = subprocess.run(
            ["git", "show", f"{rev}:meshrender/bvh.py"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"bench: cannot read meshrender/bvh.py at {rev} with git: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    spec = importlib.util.spec_from_loader(f"bvh_{rev}", loader=None)
    mod = importlib.util.module_from_spec(spec)
    exec(compile(src, f"{rev}:meshrender/bvh.py", "exec"), mod.__dict__)
    return mod


def depth_stats(bvh) -> tuple[int, float]:
    """Max depth and the mean depth of the leaves (root = 0), walking the links level by level."""
    links = bvh.links
    depth = np.zeros(len(links), dtype=np.int64)
    frontier, d = np.zeros(1, dtype=np.int64), 0
    while len(frontier):
        depth[frontier] = d
        inner = frontier[links[frontier, 1] == 0]
        frontier = np.concatenate([inner + 1, links[inner, 0].astype(np.int64)])
        d += 1
    return int(depth.max()), float(depth[links[:, 1] > 0].mean())


def tree_row(mod, bvh) -> dict:
    max_depth, leaf_depth = depth_stats(bvh)
    return {
        "sah": round(mod.sah_cost(bvh), 4),
        "nodes": bvh.node_count,
        "leaves": bvh.leaf_count,
        "tris_per_leaf": round(len(bvh.order) / bvh.leaf_count, 3),
        "max_depth": max_depth,
        "mean_leaf_depth": round(leaf_depth, 2),
    }


def time_builds(builders: dict, tris, repeats: int) -> dict:
    best = {name: [np.inf, np.inf] for name in builders}
    out = {}
    for _ in range(repeats):
        for name, mod in builders.items():
            c0, t0 = time.process_time(), time.perf_counter()
            out[name] = mod.build_bvh(*tris)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            best[name] = [min(best[name][0], wall), min(best[name][1], cpu)]
    return {name: (out[name], *best[name]) for name in builders}


def peak_mb(mod, tris) -> float:
    """Peak memory the build allocates (numpy reports its buffers to tracemalloc), one more build."""
    tracemalloc.start()
    try:
        mod.build_bvh(*tris)
        return tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def triangles(loaded):
    mesh = loaded.meshes[0]
    p = np.asarray(mesh.positions, np.float32)
    f = np.asarray(mesh.indices, np.int64)
    return p[f[:, 0]], p[f[:, 1]], p[f[:, 2]]


def render_times(loaded, builders: dict, args) -> dict:
    """Compile the scene once per builder (its BVH in the arrays) and time one frame of each,
    alternating, best of --repeats."""
    from meshrender.render import Renderer, render_frame
    from meshrender.units import whole_frame_unit

    scenes = {}
    for name, mod in builders.items():
        saved = scene_compile.build_bvh
        scene_compile.build_bvh = mod.build_bvh
        try:
            scenes[name] = scene_compile.compile_scene(loaded)
        finally:
            scene_compile.build_bvh = saved
    renderers = {name: Renderer(s, backend="cpu", threads=args.threads) for name, s in scenes.items()}
    base = next(iter(scenes.values())).settings
    s = msgspec.structs.replace(base, spp=args.spp, pass_spp=args.spp, width=args.res, height=args.res)
    for r in renderers.values():
        r.warm_up()
        render_frame(r, s, units=[whole_frame_unit(s)])  # first launch: uploads, caches
    best = {name: np.inf for name in renderers}
    for _ in range(args.repeats):
        for name, r in renderers.items():
            t0 = time.perf_counter()
            render_frame(r, s, units=[whole_frame_unit(s)])
            best[name] = min(best[name], time.perf_counter() - t0)
    row = {f"{name}_render_s": round(t, 3) for name, t in best.items()}
    row["render_ratio_new_over_base"] = round(best["new"] / best["base"], 3)
    row["Msamples_s_new"] = round(s.width * s.height * s.spp / best["new"] / 1e6, 3)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline", default=BASELINE_REV)
    ap.add_argument("--no-render", action="store_true")
    ap.add_argument("--spp", type=int, default=64)  # 256 px: about a second a frame, steadier than less
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    small = load_scene(scene_file("bunny/bunny.ply"))
    mesh = small.meshes[0]
    p, f = mesh.positions, mesh.indices
    for _ in range(2):
        p, f = subdivide(p, f)
    big = dataclasses.replace(
        small,
        meshes=[dataclasses.replace(mesh, positions=p, indices=f, material_ids=np.zeros(len(f), np.int32),
                                    normals=None, uvs=None)],
    )  # fmt: skip
    builders = {"base": load_baseline(args.baseline), "new": bvh_now}
    for label, loaded in (("bunny_69k", small), ("bunny_1m", big)):
        tris = triangles(loaded)
        built = time_builds(builders, tris, args.repeats)
        row = {"scene": label, "triangles": len(tris[0])}
        for name, (_, wall, cpu) in built.items():
            row[f"{name}_build_wall_s"] = round(wall, 3)
            row[f"{name}_build_cpu_s"] = round(cpu, 3)
        row["build_speedup_cpu"] = round(built["base"][2] / built["new"][2], 2)
        for name, mod in builders.items():
            row[f"{name}_build_peak_mb"] = round(peak_mb(mod, tris), 1)
        again = bvh_now.build_bvh(*tris)
        new = built["new"][0]
        row["new_deterministic"] = all(
            getattr(again, k).tobytes() == getattr(new, k).tobytes() for k in ("bounds", "links", "order")
        )
        for name, (bvh, *_) in built.items():
            row.update({f"{name}_{k}": v for k, v in tree_row(builders[name], bvh).items()})
        print(json.dumps(row), flush=True)
        if not args.no_render:
            try:
                print(json.dumps({"scene": label, **render_times(loaded, builders, args)}), flush=True)
            except Exception as e:  # the kernel is shared work in progress: report, keep the build figures
                print(json.dumps({"scene": label, "render_skipped": f"{type(e).__name__}: {e}"}), flush=True)


if __name__ == "__main__":
    main()
