"""Named material data (indices of refraction, conductors' complex indices) and the plastic coat's tables.

Presets
  IOR_PRESETS: absolute indices of refraction by name, Mitsuba 3's `int_ior`/`ext_ior` names
  (its table in `include/mitsuba/render/ior.h`) plus a few short aliases (`glass` is BK7, as
  Mitsuba's default dielectric). A material's `ior` is the interior's index over the exterior's;
  a preset name gives that preset over vacuum (1): within 0.03 % of Mitsuba's default exterior,
  air.
  CONDUCTOR_PRESETS: complex index (eta, k) per linear sRGB channel, exactly what Mitsuba 3.9.1's
  RGB variants use for `conductor`/`roughconductor` with `material = "Au"` and so on: its
  spectral `data/ior/*.spd` curves integrated against the CIE 1931 observer into linear sRGB.
  They were read from Mitsuba itself (`mi.traverse(mi.load_dict({"type": "conductor",
  "material": "Au"}))` in the `scalar_rgb` variant), not recomputed here.

The coat tables
  `coat_tables(ior, roughness)` returns what the kernel's plastic needs about its coat and cannot
  afford per hit: the internal diffuse reflectance R_int (the fraction of light scattered by the
  base that the coat sends back down) and, for a rough coat, the coat's transmittance t(cos) at
  COAT_TABLE_SIZE cosines. Smooth: t = 1 - F, and R_int is the integral of the exact Fresnel
  reflectance from inside, 2 int F(mu, 1/ior) mu dmu (Mitsuba uses a polynomial fit of it), so a
  white smooth plastic conserves energy exactly. Rough: as Mitsuba's roughplastic computes them
  (checked against Mitsuba 3.9.1's own roughplastic: the base's lobe agrees within 1 %), t from
  the Fresnel reflectance averaged over the GGX normals visible from each direction and R_int
  from the rough lobe's albedo seen from inside, both integrated deterministically on a grid.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ..compiled import COAT_TABLE_SIZE

IOR_PRESETS: dict[str, float] = {
    "vacuum": 1.0,
    "helium": 1.000036,
    "hydrogen": 1.000132,
    "air": 1.000277,
    "carbon dioxide": 1.00045,
    "water": 1.3330,
    "acetone": 1.36,
    "ethanol": 1.361,
    "carbon tetrachloride": 1.461,
    "glycerol": 1.4729,
    "benzene": 1.501,
    "silicone oil": 1.52045,
    "bromine": 1.661,
    "water ice": 1.31,
    "fused quartz": 1.458,
    "pyrex": 1.470,
    "acrylic glass": 1.49,
    "polypropylene": 1.49,
    "bk7": 1.5046,
    "sodium chloride": 1.544,
    "amber": 1.55,
    "pet": 1.5750,
    "diamond": 2.419,
    # short aliases
    "glass": 1.5046,  # BK7, Mitsuba's default dielectric interior
    "acrylic": 1.49,
    "ice": 1.31,
    "quartz": 1.458,
}

Rgb = tuple[float, float, float]
CONDUCTOR_PRESETS: dict[str, tuple[Rgb, Rgb]] = {  # name: (eta, k)
    "Au": ((0.143036, 0.375307, 1.44205), (3.983, 2.38556, 1.60336)),
    "Ag": ((0.155276, 0.116728, 0.138388), (4.82835, 3.12222, 2.1469)),
    "Cu": ((0.201005, 0.92375, 1.10222), (3.91326, 2.45305, 2.14209)),
    "Al": ((1.6575, 0.880405, 0.521244), (9.22381, 6.2695, 4.837)),
    "Cr": ((4.36967, 2.91651, 1.6549), (5.20655, 4.23131, 3.7547)),
    "W": ((4.37082, 3.30025, 2.99841), (3.50064, 2.60487, 2.27323)),
}

IOR_MIN, IOR_MAX = 1.0 / 4.0, 4.0  # relative indices outside this are typos (diamond/air is 2.42)
COAT_ALPHA_MIN = 1e-3  # kernels.bsdf.ALPHA_MIN: the same GGX alpha floor as the kernel
_GRID = 64  # visible-normal grid per direction (64 x 64) and cosines for R_int: errors below 1e-4
_SMOOTH_STEPS = 8192  # midpoint rule for the smooth R_int: the kink at the critical angle costs 1e-7


def ior_value(v: float | str) -> float | None:
    """An ior given as a number or a preset name (case-insensitive); None for an unknown name."""
    if isinstance(v, str):
        return IOR_PRESETS.get(v.strip().lower())
    return float(v)


def fresnel_dielectric(cos_i: np.ndarray, eta: float) -> np.ndarray:
    """Unpolarised Fresnel reflectance for cosines in [0, 1] seen from the side where the other
    medium has relative index eta (total internal reflection gives 1); as the kernel's."""
    c = np.clip(np.asarray(cos_i, np.float64), 0.0, 1.0)
    if eta == 1.0:
        return np.zeros_like(c)
    ct2 = 1.0 - (1.0 - c * c) / (eta * eta)
    ct = np.sqrt(np.maximum(ct2, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        a_s = (eta * ct - c) / (eta * ct + c)
        a_p = (eta * c - ct) / (eta * c + ct)
        f = 0.5 * (a_s * a_s + a_p * a_p)
    return np.where((ct2 <= 0.0) | (c == 0.0), 1.0, f)


def _rough_reflectance(mu: np.ndarray, eta: float, alpha: float, shadowed: bool) -> np.ndarray:
    """The rough coat's reflectance per incident cosine mu: the Fresnel reflectance averaged
    over the GGX normals visible from wo (VNDF on a midpoint grid), E[F(wo.h)]; `shadowed` also
    weighs each reflection by G1(wi) and drops those below the horizon (the lobe's albedo)."""
    mu = np.maximum(np.asarray(mu, np.float64), 1e-4)[:, None]
    wo = np.concatenate([np.sqrt(1.0 - mu * mu), np.zeros_like(mu), mu], axis=1)  # (n, 3)
    g = (np.arange(_GRID) + 0.5) / _GRID
    u1, u2 = (a.ravel() for a in np.meshgrid(g, g, indexing="ij"))
    vh = wo * np.array([alpha, alpha, 1.0])
    vh /= np.linalg.norm(vh, axis=1, keepdims=True)
    lensq = vh[:, 0] ** 2 + vh[:, 1] ** 2
    inv = np.where(lensq > 1e-12, 1.0 / np.sqrt(np.maximum(lensq, 1e-30)), 0.0)
    t1 = np.where(
        (lensq > 1e-12)[:, None], np.stack([-vh[:, 1] * inv, vh[:, 0] * inv, 0.0 * inv], 1), [1.0, 0.0, 0.0]
    )
    t2 = np.cross(vh, t1)
    r = np.sqrt(u1)[None, :]
    phi = 2.0 * math.pi * u2[None, :]
    p1 = r * np.cos(phi)
    p2 = r * np.sin(phi)
    s = 0.5 * (1.0 + vh[:, 2:3])
    p2 = (1.0 - s) * np.sqrt(np.maximum(0.0, 1.0 - p1 * p1)) + s * p2
    p3 = np.sqrt(np.maximum(0.0, 1.0 - p1 * p1 - p2 * p2))
    nh = p1[..., None] * t1[:, None, :] + p2[..., None] * t2[:, None, :] + p3[..., None] * vh[:, None, :]
    h = nh * np.array([alpha, alpha, 1.0])
    h[..., 2] = np.maximum(h[..., 2], 1e-6)
    h /= np.linalg.norm(h, axis=2, keepdims=True)
    doh = np.einsum("nk,nsk->ns", wo, h)
    f = fresnel_dielectric(doh, eta)
    if shadowed:
        wi_z = 2.0 * doh * h[..., 2] - mu
        z2 = np.maximum(wi_z * wi_z, 1e-30)
        g1 = 1.0 / (1.0 + 0.5 * (np.sqrt(1.0 + alpha * alpha * (1.0 - z2) / z2) - 1.0))
        f = np.where(wi_z > 0.0, f * g1, 0.0)
    return f.mean(axis=1)


@functools.lru_cache(maxsize=1024)
def coat_tables(ior: float, roughness: float) -> tuple[float, tuple[float, ...]]:
    """(R_int, transmittance at cos = i / (COAT_TABLE_SIZE - 1)) of a plastic's coat."""
    cos = np.linspace(0.0, 1.0, COAT_TABLE_SIZE)
    if roughness <= 0.0:
        mu = (np.arange(_SMOOTH_STEPS) + 0.5) / _SMOOTH_STEPS
        r_int = float(np.mean(fresnel_dielectric(mu, 1.0 / ior) * mu) * 2.0)
        table = 1.0 - fresnel_dielectric(cos, ior)
    else:
        alpha = max(roughness * roughness, COAT_ALPHA_MIN)
        # Mitsuba's way (checked against Mitsuba 3.9.1's roughplastic eval, within 0.5 %): the
        # transmittance from the unshadowed Fresnel average, R_int from the shadowed albedo
        # over its 64 cosines 0..1 (so Mitsuba's coat loses a little energy, as its furnace shows)
        mu = np.maximum(np.arange(_GRID) / (_GRID - 1), 1e-6)
        r_int = float(np.mean(_rough_reflectance(mu, 1.0 / ior, alpha, True) * mu) * 2.0)
        table = 1.0 - _rough_reflectance(cos, ior, alpha, False)
    return r_int, tuple(float(t) for t in np.clip(table, 0.0, 1.0))
