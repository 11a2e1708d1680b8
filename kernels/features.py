"""What a scene uses, as the bits of the path tracer's `features` template argument.

The tracer (kernels/tracer.py) is one kernel for every scene, but a scene uses only part of it:
the Cornell box has no texture, no cut-out, no sky, no point light and one material model of
five. Taichi 1.7.4 builds a kernel's IR from its Python AST in every process and has LLVM
generate machine code from the cached IR at every load (its offline cache keeps IR, not machine
code), so both costs grow with the code the kernel holds, used or not. The parts below are
guarded by `ti.static(features & F_...)`: a scene's kernel is built from the parts it uses only,
one kernel per set of features (each cached on disk by Taichi on its own). On the 2-core machine
the Cornell box's kernel loads from the cache 2.7x faster than the kernel with every part, and
compiles cold 3.3x faster (issue 16's notes give the figures).

The bits are a function of the compiled scene's arrays alone (`features_of`), so every peer of a
job runs the same kernel for its scene, and a frame is still the same bits however it is split.
Leaving a part out changes nothing a pixel gets when the scene does not use it: each guard sits
where the full kernel's own test (no textures, no light of that kind, no material of that kind)
would skip the part at run time. A material row whose kind is out of range is refused at load
(meshrender.compiled); a kind without its bit renders black rather than as another kind.
"""

from __future__ import annotations

import numpy as np

from meshrender.compiled import (
    ALPHA_OPAQUE,
    KIND_CONDUCTOR,
    KIND_DIELECTRIC,
    KIND_DIFFUSE,
    KIND_GLTF,
    KIND_PLASTIC,
    MAT_ALPHA_MODE,
    MAT_KIND,
)

F_TEXTURES = 1 << 0  # image textures (tex_info has rows): every material slot's lookup
F_ALPHA = 1 << 1  # a material with glTF alpha MASK or BLEND: cut-outs for camera, bounce and shadow rays
F_ENV = 1 << 2  # an environment (image or constant): escaping rays and its light samples
F_LIGHTS = 1 << 3  # point, spot or directional lights (suns)
F_DIFFUSE = 1 << (8 + KIND_DIFFUSE)  # one bit per material model, bsdf.KIND_*
F_CONDUCTOR = 1 << (8 + KIND_CONDUCTOR)
F_DIELECTRIC = 1 << (8 + KIND_DIELECTRIC)
F_PLASTIC = 1 << (8 + KIND_PLASTIC)
F_GLTF = 1 << (8 + KIND_GLTF)
KIND_BITS = {KIND_DIFFUSE: F_DIFFUSE, KIND_CONDUCTOR: F_CONDUCTOR, KIND_DIELECTRIC: F_DIELECTRIC,
             KIND_PLASTIC: F_PLASTIC, KIND_GLTF: F_GLTF}  # fmt: skip
F_ALL = F_TEXTURES | F_ALPHA | F_ENV | F_LIGHTS | sum(KIND_BITS.values())  # the whole tracer


def features_of(arrays: dict[str, np.ndarray]) -> int:
    """The F_* bits a compiled scene's arrays need (a padded, empty array needs nothing)."""
    bits = 0
    if arrays["tex_info"].shape[0] > 0:
        bits |= F_TEXTURES
    materials = arrays["materials"]
    if materials.shape[0] > 0 and np.any(materials[:, MAT_ALPHA_MODE] != ALPHA_OPAQUE):
        bits |= F_ALPHA
    if float(arrays["light_pick"][0]) > 0.0:  # the environment's share of light samples
        bits |= F_ENV
    if arrays["lights"].shape[0] > 0:
        bits |= F_LIGHTS
    for kind in np.unique(materials[:, MAT_KIND]).tolist() if materials.shape[0] else ():
        bits |= KIND_BITS.get(int(kind), 0)
    return bits


def describe(bits: int) -> str:
    """The parts in words, for logs and records: "diffuse, textures"."""
    names = {F_TEXTURES: "textures", F_ALPHA: "alpha", F_ENV: "environment", F_LIGHTS: "lights",
             F_DIFFUSE: "diffuse", F_CONDUCTOR: "conductor", F_DIELECTRIC: "dielectric",
             F_PLASTIC: "plastic", F_GLTF: "gltf"}  # fmt: skip
    return ", ".join(n for b, n in names.items() if bits & b) or "nothing"
