"""Time Open Image Denoise on a 1920x1080 frame with albedo + normal (issue 16's target: <= 3 s
on 2 cores). The frame is a real render (the built-in Cornell box at a few spp, its AOVs from the
kernel), so OIDN sees the content it will see in use. Prints the first call (device and filter
set-up included) and the median of the warm calls.

    .venv/bin/python bench/denoise.py [--threads 2] [--spp 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec  # noqa: E402

from meshrender.denoise import denoise  # noqa: E402
from meshrender.render import Renderer, render_frame  # noqa: E402
from meshrender.scene.compile import compile_scene  # noqa: E402
from meshrender.scene.load import load_scene  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--spp", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--res", default="1920x1080")
    args = ap.parse_args()
    w, h = (int(v) for v in args.res.split("x"))
    scene = compile_scene(load_scene("cornell"))
    settings = msgspec.structs.replace(scene.settings, width=w, height=h, spp=args.spp, pass_spp=args.spp,
                                       bucket_px=256)  # fmt: skip
    t0 = time.perf_counter()
    film = render_frame(Renderer(scene, backend="cpu", threads=args.threads), settings)
    print(f"rendered {w}x{h} at {args.spp} spp in {time.perf_counter() - t0:.1f} s (kernel compile included)")
    color = film.image()
    albedo, normal = film.aov_images()
    first = time.perf_counter()
    denoise(color, albedo, normal, threads=args.threads)
    first = time.perf_counter() - first
    warm = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        denoise(color, albedo, normal, threads=args.threads)
        warm.append(time.perf_counter() - t)
    plain = time.perf_counter()
    denoise(color, threads=args.threads)
    plain = time.perf_counter() - plain
    balanced = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        denoise(color, albedo, normal, threads=args.threads, quality="balanced")
        balanced.append(time.perf_counter() - t)
    print(f"denoise {w}x{h} albedo+normal, {args.threads} threads: first {first:.2f} s, "
          f"warm median {statistics.median(warm):.2f} s (of {args.repeat}: "
          f"{', '.join(f'{x:.2f}' for x in warm)}); colour only {plain:.2f} s; "
          f"quality=balanced albedo+normal median {statistics.median(balanced):.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
