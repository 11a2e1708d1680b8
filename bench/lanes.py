"""What shading written several samples wide would gain in Taichi's CPU backend.

The kernel shades one sample at a time, in scalar code; Mitsuba's LLVM backend shades 8 or 16
samples at once in SIMD registers. Taichi 1.7.4 has no vector types of its own on the CPU (it
splits a ti.Vector into scalars, and `real_matrix_scalarize=False` stops LLVM with an assertion),
so samples side by side can only be ti.Vector lanes that LLVM's SLP pass puts back together.
This times the same shading-like arithmetic (the kernel's hash, a cosine-weighted direction with
kernels.trig.sincos_turn, the orthonormal basis, a Lambert term) for 2**22 samples: one sample an
iteration, then LANES samples an iteration as ti.Vector(LANES) operations, on one thread. Both
give the same numbers; the ratio is what writing the shading LANES wide could gain at most (no
divergence, no masks).

    .venv/bin/python bench/lanes.py [--lanes 4 8 16]
"""

import argparse  # no "from __future__ import annotations": Taichi reads the kernels' annotations
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

N = 1 << 22


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lanes", type=int, nargs="*", default=[4, 8, 16])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import numpy as np
    import taichi as ti

    from kernels.backend import init_backend

    init_backend("cpu", 1)
    from kernels.tracer import mix32, rand
    from kernels.trig import sincos_turn

    @ti.func
    def lambert_sample(k, nx, ny, nz, u1, u2, c, s):
        """The direction of a cosine-weighted sample around n, and f * cos there (scalar or lanes)."""
        r = ti.sqrt(u1)
        lx, ly, lz = r * c, r * s, ti.sqrt(ti.max(0.0, 1.0 - u1))
        sign = ti.select(nz >= 0.0, 1.0, -1.0)
        a = -1.0 / (sign + nz)
        b = nx * ny * a
        tx, ty, tz = 1.0 + sign * nx * nx * a, sign * b, -sign * nx
        sx, sy, sz = b, sign + ny * ny * a, -ny
        wx = lx * tx + ly * sx + lz * nx
        wy = lx * ty + ly * sy + lz * ny
        wz = lx * tz + ly * sz + lz * nz
        return wx + wy + wz + 0.8 / 3.14159265 * ti.max(0.0, wz * nz + wx * nx + wy * ny)

    @ti.kernel
    def scalar(out: ti.types.ndarray(ti.f32, ndim=1)):
        for i in range(N):
            k = mix32(ti.u32(i))
            nz = rand(k, 0) * 2.0 - 1.0
            nx = ti.sqrt(ti.max(0.0, 1.0 - nz * nz))
            u1, u2 = rand(k, 3), rand(k, 4)
            c, s = sincos_turn(u2)
            out[i] = lambert_sample(k, nx, 0.0, nz, u1, u2, c, s)

    def lanes_kernel(lanes: int):
        VT = ti.types.vector(lanes, ti.f32)

        @ti.kernel
        def wide(out: ti.types.ndarray(ti.f32, ndim=1)):
            for j in range(N // lanes):
                nz, u1, u2, c, s = VT(0.0), VT(0.0), VT(0.0), VT(0.0), VT(0.0)
                for q in ti.static(range(lanes)):
                    k = mix32(ti.u32(j * lanes + q))
                    nz[q] = rand(k, 0) * 2.0 - 1.0
                    u1[q], u2[q] = rand(k, 3), rand(k, 4)
                    c[q], s[q] = sincos_turn(u2[q])
                nx = ti.sqrt(ti.max(0.0, 1.0 - nz * nz))
                res = lambert_sample(0, nx, VT(0.0), nz, u1, u2, c, s)
                for q in ti.static(range(lanes)):
                    out[j * lanes + q] = res[q]

        return wide

    def best(kernel, out) -> float:
        kernel(out)  # compile
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            kernel(out)
            times.append(time.perf_counter() - t)
        return min(times)

    ref = np.zeros(N, np.float32)
    base = best(scalar, ref)
    print(json.dumps({"lanes": 1, "Msamples_s": round(N / base / 1e6, 1)}), flush=True)
    for lanes in args.lanes:
        out = np.zeros(N, np.float32)
        t = best(lanes_kernel(lanes), out)
        same = bool(np.array_equal(out, ref))
        rec = {"lanes": lanes, "Msamples_s": round(N / t / 1e6, 1), "vs_scalar": round(base / t, 2)}
        print(json.dumps({**rec, "same_bits": same}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
