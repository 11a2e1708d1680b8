"""What the denoiser's auxiliary images hold: the albedo and normal a path records, as Taichi funcs.

How the tracer uses them (Intel Open Image Denoise's documentation, "RT" filter, albedo/normal):
  * Each sample records one albedo and one normal, at its first vertex whose BSDF is not delta-only
    (a diffuse, rough or plastic surface). Delta vertices (a mirror, smooth glass, a thin pane) are
    followed: the albedo found behind them is multiplied by their tint (`delta_tint`: the sampled
    weight with radiance's 1/eta^2 taken out, so clear glass is 1 and a gold mirror is gold), and
    averaging the reflected and refracted branches over samples gives the Fresnel blend OIDN asks
    for. A path that ends (absorbed, Russian roulette, max_depth) before it finds one keeps the
    last delta vertex's own albedo and normal.
  * A path that escapes before any non-delta vertex records the environment's radiance clamped to
    [0, 1] (times the tint), so a pixel of sky has an albedo like its colour, and a zero normal.
  * The albedo (`surface_albedo`) is the material's reflectance, always in [0, 1]: diffuse and
    plastic the (textured) base colour (the clear coat is ignored, as OIDN allows), a conductor its
    Fresnel reflectance at normal incidence times base, a dielectric its tint (1 for clear glass).
    An emitter seen from its emitting side adds its radiance (clamped), so a lamp stands apart
    from the wall it is set in (the denoiser keeps its edge instead of smearing it).
  * The normal is the world-space shading normal, turned to face the ray (`facing_normal`).
Sums over a pass travel beside the radiance sums and are averaged (sum / samples) for OIDN.
"""

import taichi as ti
from taichi.math import vec3

from kernels.bsdf import Bsdf, conductor_fresnel
from kernels.features import F_CONDUCTOR
from meshrender.compiled import KIND_CONDUCTOR


@ti.func
def clamp01(c: vec3) -> vec3:
    return ti.min(ti.max(c, 0.0), 1.0)


@ti.func
def surface_albedo(features: ti.template(), b: Bsdf) -> vec3:
    """The material's reflectance for the denoiser, in [0, 1]."""
    a = b.base
    if ti.static(features & F_CONDUCTOR):
        if b.kind == KIND_CONDUCTOR:
            a = conductor_fresnel(b, 1.0)
    return clamp01(a)


@ti.func
def facing_normal(ns: vec3, wo: vec3) -> vec3:
    """The shading normal on the side the ray arrives from."""
    return ns if ns.dot(wo) >= 0.0 else -ns


@ti.func
def delta_tint(weight: vec3, eta: ti.f32) -> vec3:
    """A delta bounce's colour: its sampled weight without radiance's 1 / eta^2, in [0, 1]."""
    return clamp01(weight * (eta * eta))
