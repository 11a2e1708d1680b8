"""cos and sin of a turn fraction, for sampling: (cos 2 pi u, sin 2 pi u) from a few multiplies.

Every sampled direction around an axis (cosine-weighted and GGX-visible hemispheres, the lens,
the sphere of the environment, a sun's cap) takes an angle 2 pi u for a uniform u. `sincos_turn`
folds u to the nearest quarter turn q / 4 (r = u - q / 4 in [-1/8, 1/8] is exact: Sterbenz),
evaluates Taylor polynomials of sin and cos at 2 pi r in [-pi/4, pi/4] (truncation under 3e-8),
and rotates by q quarter turns, which only swaps and negates. The error is a few float32 ulp,
like libm's; the cost is a dozen multiplies and adds where libm's cosf and sinf were two calls
with their own range reduction (5% of a Cornell box render on the CPU, in `perf`). And it is
plain IEEE arithmetic (no fused multiply-adds: kernels.backend runs without fast math), so it
gives the same bits on every CPU, where libm's results are its own.
"""

import math  # no "from __future__ import annotations": Taichi reads the annotations as objects

import taichi as ti

TWO_PI = 2.0 * math.pi


@ti.func
def sincos_turn(u: ti.f32):
    """(cos(2 pi u), sin(2 pi u)) for u in [0, 1] (what sampling passes)."""
    q = ti.floor(u * 4.0 + 0.5)
    r = u - q * 0.25
    t = r * TWO_PI
    t2 = t * t
    s = t * (1.0 + t2 * (-1.0 / 6.0 + t2 * (1.0 / 120.0 + t2 * (-1.0 / 5040.0 + t2 * (1.0 / 362880.0)))))
    c = 1.0 + t2 * (-0.5 + t2 * (1.0 / 24.0 + t2 * (-1.0 / 720.0 + t2 * (1.0 / 40320.0))))
    k = ti.i32(q) & 3  # quarter turns: (c, s) -> (-s, c) -> (-c, -s) -> (s, -c); selects, as a
    swap = (k & 1) != 0  # branch on a random quadrant is mispredicted three times in four
    a = ti.select(swap, s, c)
    b = ti.select(swap, c, s)
    return ti.select((k == 1) | (k == 2), -a, a), ti.select(k >= 2, -b, b)
