"""The BSDFs: diffuse, conductor, dielectric (smooth, rough, thin), plastic and glTF's
metallic-roughness, as Taichi funcs.

How they are called
  * Everything is in the local shading frame, whose +z is the surface's FRONT normal (the side
    the counter-clockwise face normal points to), not the side the ray came from: wo.z < 0 means
    the path arrives from the back (from inside a dielectric). `wo` points towards the camera
    side of the path, `wi` towards the light; f is for radiance (Mitsuba's TransportMode::Radiance).
  * Each takes `features` first (a template: kernels/features.py), whose F_<kind> bits say which
    models this kernel holds; a kind without its bit is absorbed (black). The kernel for a scene
    has the bits of every kind its materials use, so that never happens in a render.
  * `bsdf_eval(features, materials, b, wo, wi)` returns f(wo, wi) |cos theta_i| of the material's non-delta
    lobes and the solid-angle pdf with which `bsdf_sample` picks wi through those lobes (the lobe
    choice included). Delta lobes (roughness 0: a mirror, smooth refraction, a thin pane, a smooth
    plastic coat) evaluate to 0: no direction chosen by light sampling can hit them.
  * `bsdf_sample(features, materials, b, wo, u1, u2, u3)` returns (wi, weight, pdf, delta, eta):
    weight = f |cos| / pdf; u1, u2 pick the direction inside a lobe, u3 picks the lobe. For a delta
    lobe, `delta` is 1 and `pdf` the discrete probability of that lobe: the caller skips MIS for
    it (an emitter hit after a delta bounce gets weight 1). `eta` is the relative index the path
    crossed (1 for a reflection), so that the caller can take radiance's 1/eta^2 out of Russian
    roulette as Mitsuba does. pdf = 0 means no direction (absorbed).
  * `bsdf_has_smooth(features, b)` says whether a material has a non-delta lobe, i.e. whether next-event
    estimation can find anything at all.
  * One-sided materials (`two_sided` 0, the default) are black seen from the back; two-sided ones
    mirror wo and wi to the front first (Mitsuba's `twosided`). Dielectrics always have two
    sides: from the back the relative index is 1 / ior.

The models
  diffuse     Lambert: f = base / pi.
  conductor   GGX (Trowbridge-Reitz) with alpha = roughness^2 and the separable Smith masking-
              shadowing G2 = G1(wo) G1(wi) of Walter et al. 2007 (as Mitsuba), visible-normal
              sampling (Heitz 2018);
              Fresnel: Schlick with F0 = base, the exact unpolarised conductor Fresnel of eta + ik
              times base, or base alone ("none": 1 is a perfect mirror). Roughness 0 is a mirror.
  dielectric  exact unpolarised dielectric Fresnel with total internal reflection. Smooth: delta
              reflection / refraction chosen with probability F / 1 - F. Rough: Walter et al. 2007
              with the same G2, VNDF sampling of the microfacet seen from wo, then reflection or
              refraction by its Fresnel. Radiance crossing into a medium of relative index eta is
              scaled by 1 / eta^2. `base` tints the transmission. Thin: Mitsuba's thindielectric,
              a pane with two interfaces and all their inter-reflections, light going straight
              through (R' = R + T^2 R / (1 - R^2)); roughness is ignored.
  plastic     Mitsuba's plastic / roughplastic: a dielectric coat (smooth, or rough GGX) of `ior`
              over a Lambert base: f = coat reflection + base / (1 - R_int) * t(wo) t(wi) / (pi eta^2),
              where t is the coat's transmittance (1 - F when smooth, a table of 1 - the rough coat's
              reflectance made on the host when rough) and R_int the coat's internal diffuse
              reflectance (host too: scene.materials.coat_tables). The coat is sampled with
              probability (1 - t(wo)) w, the base with t(wo) (1 - w), w = 1 / (1 + mean(base)).
  gltf        the glTF 2.0 spec's reference BRDF (Appendix B): mix(dielectric, metal, metallic),
              metal = F_m D G2 / (4 cos_o cos_i) with Schlick F_m of F0 = base, dielectric =
              fresnel_mix: (1 - F_d) base / pi + F_d D G2 / (4 cos_o cos_i), Schlick F_d of F0 =
              ((ior - 1) / (ior + 1))^2 (0.04 at glTF's 1.5), all at the half vector (so it is
              reciprocal). The two specular lobes are one GGX lobe with Schlick F0 = mix(F0_d, base,
              metallic); alpha = roughness^2 (floored at ALPHA_MIN: never a delta lobe), the same
              G2 as the conductor. Sampled: the GGX lobe (VNDF) with probability p_s, Lambert
              otherwise, p_s = s / (s + d) from wo alone, s = mean(Schlick(F0, cos_o)), d = (1 -
              metallic) mean(base) (1 - F_d(cos_o)), kept in [0.1, 0.9] so neither lobe starves.
              The roughness and metallic arrive per texel (the caller sets `alpha` and `metallic`).
"""

import math  # no "from __future__ import annotations": Taichi reads the annotations as objects

import taichi as ti
from taichi.math import vec3

from kernels.features import F_CONDUCTOR, F_DIELECTRIC, F_DIFFUSE, F_GLTF, F_PLASTIC
from kernels.trig import sincos_turn
from meshrender.compiled import (
    COAT_TABLE_SIZE,
    FRESNEL_COMPLEX,
    FRESNEL_SCHLICK,
    KIND_CONDUCTOR,
    KIND_DIELECTRIC,
    KIND_DIFFUSE,
    KIND_GLTF,
    KIND_PLASTIC,
    MAT_COAT_RINT,
    MAT_COAT_TABLE,
    MAT_ETA,
    MAT_FRESNEL,
    MAT_IOR,
    MAT_K,
    MAT_KIND,
    MAT_METALLIC,
    MAT_ROUGHNESS,
    MAT_THIN,
    MAT_TWO_SIDED,
)

PI = math.pi
INV_PI = 1.0 / math.pi
ALPHA_MIN = 1e-3  # GGX alpha floor for roughness > 0: keeps D and the pdf finite in float32
GLTF_LOBE_P_MIN = 0.1  # gltf: each lobe is sampled at least this often (a lobe's weight is a guess)

Bsdf = ti.types.struct(
    kind=ti.i32,
    base=vec3,  # base colour, textured
    alpha=ti.f32,  # GGX alpha; 0: smooth (delta lobes)
    ior=ti.f32,  # dielectric, plastic: interior over exterior
    eta=vec3,  # conductor, complex Fresnel
    k=vec3,
    fresnel=ti.i32,
    thin=ti.i32,
    two_sided=ti.i32,
    r_int=ti.f32,  # plastic: the coat's internal diffuse reflectance
    row=ti.i32,  # the material's row, for the plastic coat table
    metallic=ti.f32,  # gltf: per texel
)


@ti.func
def bsdf_load(features: ti.template(), materials: ti.template(), m: ti.i32, base: vec3) -> Bsdf:
    """Material row m of the compiled table, with the (textured) base colour."""
    r = materials[m, MAT_ROUGHNESS]
    alpha = 0.0
    if r > 0.0:
        alpha = ti.max(r * r, ALPHA_MIN)
    b = Bsdf(
        kind=ti.i32(materials[m, MAT_KIND]),
        base=base,
        alpha=alpha,
        ior=1.5,
        eta=vec3(0.0),
        k=vec3(0.0),
        fresnel=FRESNEL_SCHLICK,
        thin=0,
        two_sided=ti.i32(materials[m, MAT_TWO_SIDED]),
        r_int=0.0,
        row=m,
        metallic=0.0,
    )
    # only the fields the kind uses are read: every hit pays for these loads
    if b.kind == KIND_CONDUCTOR:
        if ti.static(features & F_CONDUCTOR):
            b.fresnel = ti.i32(materials[m, MAT_FRESNEL])
            if b.fresnel == FRESNEL_COMPLEX:
                b.eta = vec3(materials[m, MAT_ETA], materials[m, MAT_ETA + 1], materials[m, MAT_ETA + 2])
                b.k = vec3(materials[m, MAT_K], materials[m, MAT_K + 1], materials[m, MAT_K + 2])
    elif b.kind == KIND_DIELECTRIC:
        if ti.static(features & F_DIELECTRIC):
            b.ior = materials[m, MAT_IOR]
            b.thin = ti.i32(materials[m, MAT_THIN])
    elif b.kind == KIND_PLASTIC:
        if ti.static(features & F_PLASTIC):
            b.ior = materials[m, MAT_IOR]
            b.r_int = materials[m, MAT_COAT_RINT]
    elif b.kind == KIND_GLTF:
        if ti.static(features & F_GLTF):
            b.ior = materials[m, MAT_IOR]
            b.metallic = ti.min(1.0, ti.max(0.0, materials[m, MAT_METALLIC]))
            b.alpha = gltf_alpha(r)
    return b


@ti.func
def gltf_alpha(roughness: ti.f32) -> ti.f32:
    """glTF's GGX alpha: roughness^2, floored (its lobe is never a delta)."""
    r = ti.min(1.0, ti.max(0.0, roughness))
    return ti.max(r * r, ALPHA_MIN)


@ti.func
def bsdf_has_smooth(features: ti.template(), b: Bsdf) -> ti.i32:
    """1 when the material has a non-delta lobe (light sampling can reach it), else 0."""
    res = 1
    if ti.static(features & F_CONDUCTOR):
        if b.kind == KIND_CONDUCTOR and b.alpha == 0.0:
            res = 0
    if ti.static(features & F_DIELECTRIC):
        if b.kind == KIND_DIELECTRIC and (b.alpha == 0.0 or b.thin != 0):
            res = 0
    return res


# ----------------------------------------------------------------------------- building blocks


@ti.func
def ggx_d(h: vec3, alpha: ti.f32) -> ti.f32:
    res = 0.0
    if h.z > 0.0:
        a2 = alpha * alpha
        c2 = h.z * h.z
        den = c2 * (a2 - 1.0) + 1.0
        res = a2 / (PI * den * den)
    return res


@ti.func
def ggx_lambda(w: vec3, alpha: ti.f32) -> ti.f32:
    c2 = w.z * w.z
    s2 = ti.max(0.0, 1.0 - c2)
    res = 0.0
    if c2 > 0.0:
        t2 = s2 / c2
        res = 0.5 * (ti.sqrt(1.0 + alpha * alpha * t2) - 1.0)
    return res


@ti.func
def ggx_sample_vndf(wo: vec3, alpha: ti.f32, u1: ti.f32, u2: ti.f32) -> vec3:
    """Visible-normal sampling (Heitz 2018) for wo in the upper hemisphere; returns the microfacet normal."""
    vh = vec3(alpha * wo.x, alpha * wo.y, wo.z).normalized()
    lensq = vh.x * vh.x + vh.y * vh.y
    t1 = vec3(1.0, 0.0, 0.0)
    if lensq > 1e-12:
        t1 = vec3(-vh.y, vh.x, 0.0) / ti.sqrt(lensq)
    t2 = vh.cross(t1)
    r = ti.sqrt(u1)
    cos_phi, sin_phi = sincos_turn(u2)
    p1 = r * cos_phi
    p2 = r * sin_phi
    s = 0.5 * (1.0 + vh.z)
    p2 = (1.0 - s) * ti.sqrt(ti.max(0.0, 1.0 - p1 * p1)) + s * p2
    nh = p1 * t1 + p2 * t2 + ti.sqrt(ti.max(0.0, 1.0 - p1 * p1 - p2 * p2)) * vh
    return vec3(alpha * nh.x, alpha * nh.y, ti.max(1e-6, nh.z)).normalized()


@ti.func
def sample_cosine(u1: ti.f32, u2: ti.f32) -> vec3:
    r = ti.sqrt(u1)
    cos_phi, sin_phi = sincos_turn(u2)
    return vec3(r * cos_phi, r * sin_phi, ti.sqrt(ti.max(0.0, 1.0 - u1)))


@ti.func
def reflect(w: vec3, h: vec3) -> vec3:
    return 2.0 * w.dot(h) * h - w


@ti.func
def schlick(f0: vec3, c: ti.f32) -> vec3:
    m = ti.max(0.0, 1.0 - c)
    m5 = m * m * m * m * m
    return f0 + (1.0 - f0) * m5


@ti.func
def fresnel_dielectric(cos_i: ti.f32, eta: ti.f32):
    """Unpolarised Fresnel reflectance at an interface of relative index eta (inside over outside)
    for a direction with cosine cos_i to the front normal (negative: from inside). Returns
    (F, cos_t, eta_it, eta_ti): the signed cosine of the refracted direction (opposite side),
    and the index ratios across (eta_it = n_t / n_i). Total internal reflection gives F = 1."""
    outside = cos_i >= 0.0
    eta_it = eta if outside else 1.0 / eta
    eta_ti = 1.0 / eta_it
    cos_t2 = 1.0 - eta_ti * eta_ti * (1.0 - cos_i * cos_i)
    ci = ti.abs(cos_i)
    ct = ti.sqrt(ti.max(0.0, cos_t2))
    a_s = (eta_it * ct - ci) / (eta_it * ct + ci)
    a_p = (eta_it * ci - ct) / (eta_it * ci + ct)
    f = 0.5 * (a_s * a_s + a_p * a_p)
    if eta == 1.0:
        f = 0.0
    elif ci == 0.0 or cos_t2 <= 0.0:
        f = 1.0
    cos_t = -ct if outside else ct
    return f, cos_t, eta_it, eta_ti


@ti.func
def fresnel_conductor(c: ti.f32, eta: vec3, k: vec3) -> vec3:
    """Exact unpolarised reflectance of a conductor of complex index eta + i k (per channel)."""
    c = ti.min(1.0, ti.max(0.0, c))
    c2 = c * c
    s2 = 1.0 - c2
    eta2 = eta * eta
    k2 = k * k
    t0 = eta2 - k2 - s2
    a2b2 = ti.sqrt(ti.max(t0 * t0 + 4.0 * eta2 * k2, 0.0))
    t1 = a2b2 + c2
    a = ti.sqrt(ti.max(0.5 * (a2b2 + t0), 0.0))
    t2 = 2.0 * c * a
    rs = (t1 - t2) / ti.max(t1 + t2, 1e-20)
    t3 = c2 * a2b2 + s2 * s2
    t4 = t2 * s2
    rp = rs * (t3 - t4) / ti.max(t3 + t4, 1e-20)
    return ti.min(1.0, ti.max(0.0, 0.5 * (rp + rs)))


@ti.func
def conductor_fresnel(b: Bsdf, c: ti.f32) -> vec3:
    f = b.base  # FRESNEL_NONE: base alone (1: a perfect mirror)
    if b.fresnel == FRESNEL_SCHLICK:
        f = schlick(b.base, c)
    elif b.fresnel == FRESNEL_COMPLEX:
        f = b.base * fresnel_conductor(c, b.eta, b.k)
    return f


@ti.func
def coat_transmittance(materials: ti.template(), b: Bsdf, c: ti.f32) -> ti.f32:
    """The plastic coat's transmittance at cosine c: 1 - F when smooth, the host's table when rough."""
    t = 0.0
    if b.alpha == 0.0:
        f, _ct, _a, _b = fresnel_dielectric(c, b.ior)
        t = 1.0 - f
    else:
        x = ti.min(1.0, ti.max(0.0, c)) * (COAT_TABLE_SIZE - 1)
        i = ti.min(ti.i32(x), COAT_TABLE_SIZE - 2)
        w = x - i
        t0 = materials[b.row, MAT_COAT_TABLE + i]
        t1 = materials[b.row, MAT_COAT_TABLE + i + 1]
        t = t0 * (1.0 - w) + t1 * w
    return t


# ----------------------------------------------------------------------------- the lobes


@ti.func
def microfacet_reflection(alpha: ti.f32, wo: vec3, wi: vec3):
    """D G2 / (4 cos_o) (to be times F) and the VNDF pdf of wi, both in the upper hemisphere."""
    h = (wo + wi).normalized()
    d = ggx_d(h, alpha)
    g1o = 1.0 / (1.0 + ggx_lambda(wo, alpha))
    g1i = 1.0 / (1.0 + ggx_lambda(wi, alpha))
    val = d * g1o * g1i / (4.0 * wo.z)
    pdf = d * g1o / (4.0 * wo.z)
    return h, val, pdf


@ti.func
def rough_dielectric_eval(b: Bsdf, wo: vec3, wi: vec3):
    """Walter et al. 2007 with VNDF sampling; wo and wi on either side."""
    f = vec3(0.0)
    pdf = 0.0
    co = wo.z
    ci = wi.z
    if co != 0.0 and ci != 0.0:
        is_r = co * ci > 0.0
        eta = b.ior if co > 0.0 else 1.0 / b.ior  # index on wi's side over wo's
        h = wo + wi * (1.0 if is_r else eta)
        if h.norm_sqr() > 1e-20:
            h = h.normalized()
            if h.z < 0.0:
                h = -h
            doh = wo.dot(h)
            dih = wi.dot(h)
            # each direction must see the microfacet from its own side of the surface
            if doh * co > 0.0 and dih * ci > 0.0:
                d = ggx_d(h, b.alpha)
                g1o = 1.0 / (1.0 + ggx_lambda(wo, b.alpha))
                g = g1o / (1.0 + ggx_lambda(wi, b.alpha))
                fr, _ct, _eit, _eti = fresnel_dielectric(doh, b.ior)
                p_h = d * g1o * ti.abs(doh) / ti.abs(co)  # visible normals seen from wo
                if is_r:
                    f = vec3(fr * d * g / (4.0 * ti.abs(co)))
                    pdf = p_h * fr / (4.0 * ti.abs(dih))
                else:
                    den = doh + eta * dih
                    den2 = den * den
                    if den2 > 0.0:
                        # Walter's eta_o^2 and radiance's 1 / eta^2 cancel
                        val = (1.0 - fr) * d * g * ti.abs(doh * dih) / (ti.abs(co) * den2)
                        f = b.base * val
                        pdf = p_h * (1.0 - fr) * eta * eta * ti.abs(dih) / den2
    return f, pdf


@ti.func
def plastic_eval(materials: ti.template(), b: Bsdf, wo: vec3, wi: vec3):
    """Both directions in the upper hemisphere. Non-delta part only (the base, and a rough coat)."""
    t_o = coat_transmittance(materials, b, wo.z)
    t_i = coat_transmittance(materials, b, wi.z)
    w_spec = 1.0 / (1.0 + (b.base.x + b.base.y + b.base.z) / 3.0)
    p_s = (1.0 - t_o) * w_spec
    p_d = t_o * (1.0 - w_spec)
    p_s = p_s / (p_s + p_d)
    f = b.base * (t_o * t_i * wi.z * INV_PI / (b.ior * b.ior * (1.0 - b.r_int)))
    pdf = (1.0 - p_s) * wi.z * INV_PI
    if b.alpha > 0.0:
        h, val, p = microfacet_reflection(b.alpha, wo, wi)
        fr, _ct, _eit, _eti = fresnel_dielectric(wo.dot(h), b.ior)
        f += vec3(fr * val)
        pdf += p_s * p
    return f, pdf


@ti.func
def gltf_lobes(b: Bsdf, wo: vec3):
    """(F0 of the GGX lobe, F0 of the dielectric part, P(sample the GGX lobe)) for wo."""
    r = (b.ior - 1.0) / (b.ior + 1.0)
    f0_d = r * r
    f0 = vec3(f0_d) * (1.0 - b.metallic) + b.base * b.metallic
    fs = schlick(f0, wo.z)
    spec = (fs.x + fs.y + fs.z) / 3.0
    fd = schlick(vec3(f0_d), wo.z).x
    diff = (1.0 - b.metallic) * (b.base.x + b.base.y + b.base.z) / 3.0 * (1.0 - fd)
    p_s = 0.5
    if spec + diff > 0.0:
        p_s = spec / (spec + diff)
    p_s = ti.min(1.0 - GLTF_LOBE_P_MIN, ti.max(GLTF_LOBE_P_MIN, p_s))
    return f0, f0_d, p_s


@ti.func
def gltf_eval(b: Bsdf, wo: vec3, wi: vec3):
    """Both directions in the upper hemisphere: f |cos_i| and the pdf of the two-lobe sampler."""
    f0, f0_d, p_s = gltf_lobes(b, wo)
    h, val, p = microfacet_reflection(b.alpha, wo, wi)
    c = ti.max(0.0, wo.dot(h))
    fd = schlick(vec3(f0_d), c).x
    f = schlick(f0, c) * val + b.base * ((1.0 - b.metallic) * (1.0 - fd) * wi.z * INV_PI)
    pdf = p_s * p + (1.0 - p_s) * wi.z * INV_PI
    return f, pdf


@ti.func
def bsdf_eval(features: ti.template(), materials: ti.template(), b: Bsdf, wo: vec3, wi: vec3):
    """f(wo, wi) |cos theta_i| of the non-delta lobes, and the pdf of sampling wi through them."""
    f = vec3(0.0)
    pdf = 0.0
    if b.kind == KIND_DIELECTRIC:
        if ti.static(features & F_DIELECTRIC):
            if b.alpha > 0.0 and b.thin == 0:
                f, pdf = rough_dielectric_eval(b, wo, wi)
    else:
        s = 1.0
        if wo.z < 0.0 and b.two_sided != 0:
            s = -1.0
        o = vec3(wo.x, wo.y, wo.z * s)
        i = vec3(wi.x, wi.y, wi.z * s)
        if o.z > 0.0 and i.z > 0.0:
            if b.kind == KIND_DIFFUSE:
                if ti.static(features & F_DIFFUSE):
                    f = b.base * (i.z * INV_PI)
                    pdf = i.z * INV_PI
            elif b.kind == KIND_CONDUCTOR:
                if ti.static(features & F_CONDUCTOR):
                    if b.alpha > 0.0:
                        h, val, p = microfacet_reflection(b.alpha, o, i)
                        f = conductor_fresnel(b, ti.max(0.0, i.dot(h))) * val
                        pdf = p
            elif b.kind == KIND_GLTF:
                if ti.static(features & F_GLTF):
                    f, pdf = gltf_eval(b, o, i)
            elif b.kind == KIND_PLASTIC:
                if ti.static(features & F_PLASTIC):
                    f, pdf = plastic_eval(materials, b, o, i)
    return f, pdf


@ti.func
def bsdf_sample(
    features: ti.template(), materials: ti.template(), b: Bsdf, wo: vec3, u1: ti.f32, u2: ti.f32, u3: ti.f32
):
    """(wi, f |cos| / pdf, pdf, delta, eta); see the module's opening lines."""
    wi = vec3(0.0, 0.0, 1.0)
    weight = vec3(0.0)
    pdf = 0.0
    delta = 0
    eta = 1.0
    if b.kind == KIND_DIELECTRIC:
        if ti.static(features & F_DIELECTRIC):
            if b.thin != 0:
                r, _ct, _eit, _eti = fresnel_dielectric(ti.abs(wo.z), b.ior)
                if r < 1.0:
                    t = 1.0 - r
                    r += t * t * r / (1.0 - r * r)
                delta = 1
                if u3 < r:
                    wi = vec3(-wo.x, -wo.y, wo.z)
                    weight = vec3(1.0)
                    pdf = r
                else:
                    wi = -wo
                    weight = b.base
                    pdf = 1.0 - r
            elif b.alpha == 0.0:
                fr, cos_t, eta_it, eta_ti = fresnel_dielectric(wo.z, b.ior)
                delta = 1
                if u3 < fr:
                    wi = vec3(-wo.x, -wo.y, wo.z)
                    weight = vec3(1.0)
                    pdf = fr
                else:
                    wi = vec3(-eta_ti * wo.x, -eta_ti * wo.y, cos_t)
                    weight = b.base * (eta_ti * eta_ti)
                    pdf = 1.0 - fr
                    eta = eta_it
            else:
                side = 1.0 if wo.z >= 0.0 else -1.0
                h = ggx_sample_vndf(wo * side, b.alpha, u1, u2)
                doh = wo.dot(h)
                fr, cos_t, eta_it, eta_ti = fresnel_dielectric(doh, b.ior)
                want_r = u3 < fr
                if want_r:
                    wi = reflect(wo, h)
                else:
                    wi = h * (doh * eta_ti + cos_t) - wo * eta_ti
                    eta = eta_it
                # the chosen lobe must leave on its own side of the surface
                if (wi.z * wo.z > 0.0) == want_r and wi.z != 0.0:
                    f, p = rough_dielectric_eval(b, wo, wi)
                    if p > 0.0:
                        pdf = p
                        weight = f / p
    else:
        s = 1.0
        if wo.z < 0.0 and b.two_sided != 0:
            s = -1.0
        o = vec3(wo.x, wo.y, wo.z * s)
        if o.z > 0.0:
            if b.kind == KIND_DIFFUSE:
                if ti.static(features & F_DIFFUSE):
                    wi = sample_cosine(u1, u2)
                    pdf = wi.z * INV_PI
                    if pdf > 0.0:
                        weight = b.base
            elif b.kind == KIND_CONDUCTOR:
                if ti.static(features & F_CONDUCTOR):
                    if b.alpha == 0.0:
                        wi = vec3(-o.x, -o.y, o.z)
                        weight = conductor_fresnel(b, o.z)
                        pdf = 1.0
                        delta = 1
                    else:
                        h = ggx_sample_vndf(o, b.alpha, u1, u2)
                        wi = reflect(o, h)
                        if wi.z > 0.0:
                            hh, val, p = microfacet_reflection(b.alpha, o, wi)
                            if p > 0.0:
                                pdf = p
                                weight = conductor_fresnel(b, ti.max(0.0, wi.dot(hh))) * (val / p)
            elif b.kind == KIND_GLTF:
                if ti.static(features & F_GLTF):
                    _f0, _f0d, p_s = gltf_lobes(b, o)
                    if u3 < p_s:
                        wi = reflect(o, ggx_sample_vndf(o, b.alpha, u1, u2))
                    else:
                        wi = sample_cosine(u1, u2)
                    if wi.z > 0.0:
                        f, p = gltf_eval(b, o, wi)
                        if p > 0.0:
                            pdf = p
                            weight = f / p
            elif b.kind == KIND_PLASTIC:
                if ti.static(features & F_PLASTIC):
                    t_o = coat_transmittance(materials, b, o.z)
                    w_spec = 1.0 / (1.0 + (b.base.x + b.base.y + b.base.z) / 3.0)
                    p_s = (1.0 - t_o) * w_spec
                    p_d = t_o * (1.0 - w_spec)
                    p_s = p_s / (p_s + p_d)
                    if u3 < p_s and b.alpha == 0.0:
                        wi = vec3(-o.x, -o.y, o.z)
                        weight = vec3((1.0 - t_o) / p_s)
                        pdf = p_s
                        delta = 1
                    else:
                        if u3 < p_s:
                            wi = reflect(o, ggx_sample_vndf(o, b.alpha, u1, u2))
                        else:
                            wi = sample_cosine(u1, u2)
                        if wi.z > 0.0:
                            f, p = plastic_eval(materials, b, o, wi)
                            if p > 0.0:
                                pdf = p
                                weight = f / p
        wi.z *= s
    return wi, weight, pdf, delta, eta
