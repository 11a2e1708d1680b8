"""kernels.trig: cos and sin of a turn fraction, as sampling uses them.

Against float64 numpy on a dense grid and at the quarter- and eighth-turn boundaries; and bit for
bit against the same polynomial in float32 numpy, step by step: the kernel's arithmetic is plain
IEEE (no fused multiply-add, no reassociation), so any machine gives the same directions.
"""

import math  # no "from __future__ import annotations": Taichi reads the kernels' annotations

import numpy as np
import taichi as ti

from kernels.trig import sincos_turn

F32_1D = ti.types.ndarray(dtype=ti.f32, ndim=1)
F32_2D = ti.types.ndarray(dtype=ti.f32, ndim=2)


@ti.kernel
def _sincos_k(u: F32_1D, out: F32_2D):
    for i in range(u.shape[0]):
        c, s = sincos_turn(u[i])
        out[i, 0] = c
        out[i, 1] = s


def kernel_sincos(u: np.ndarray) -> np.ndarray:
    from kernels.backend import init_backend

    init_backend("cpu")  # as the renderer starts it (no fast math)
    out = np.zeros((len(u), 2), np.float32)
    _sincos_k(u, out)
    return out


def numpy_sincos(u: np.ndarray) -> np.ndarray:
    """The same steps as kernels.trig, each rounded to float32."""
    f = np.float32
    q = np.floor(u * f(4.0) + f(0.5))
    t = (u - q * f(0.25)) * f(2.0 * math.pi)
    t2 = t * t
    s7 = f(-1.0 / 5040.0) + t2 * f(1.0 / 362880.0)
    s = t * (f(1.0) + t2 * (f(-1.0 / 6.0) + t2 * (f(1.0 / 120.0) + t2 * s7)))
    c6 = f(-1.0 / 720.0) + t2 * f(1.0 / 40320.0)
    c = f(1.0) + t2 * (f(-0.5) + t2 * (f(1.0 / 24.0) + t2 * c6))
    k = q.astype(np.int32) & 3
    a, b = np.where(k & 1, s, c), np.where(k & 1, c, s)
    return np.stack([np.where((k == 1) | (k == 2), -a, a), np.where(k >= 2, -b, b)], axis=1)


def grid() -> np.ndarray:
    dense = np.arange(1 << 20, dtype=np.float32) / np.float32(1 << 20)
    edges = np.array([0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0], np.float32)
    near = np.concatenate([np.nextafter(edges, np.float32(-1)), edges, np.nextafter(edges, np.float32(2))])
    return np.concatenate([dense, near[(near >= 0) & (near <= 1)]]).astype(np.float32)


def test_matches_float64_cos_and_sin():
    u = grid()
    got = kernel_sincos(u).astype(np.float64)
    angle = 2.0 * np.pi * u.astype(np.float64)
    assert np.abs(got[:, 0] - np.cos(angle)).max() < 2e-7
    assert np.abs(got[:, 1] - np.sin(angle)).max() < 2e-7
    assert np.abs(got[:, 0] ** 2 + got[:, 1] ** 2 - 1.0).max() < 5e-7


def test_quarter_turns_are_exact():
    got = kernel_sincos(np.array([0.0, 0.25, 0.5, 0.75, 1.0], np.float32))
    np.testing.assert_array_equal(got, [[1, 0], [0, 1], [-1, 0], [0, -1], [1, 0]])


def test_same_bits_as_plain_float32_steps():
    u = grid()
    np.testing.assert_array_equal(kernel_sincos(u).view(np.uint32), numpy_sincos(u).view(np.uint32))
