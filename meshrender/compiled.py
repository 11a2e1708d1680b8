"""The compiled scene: every array a render needs, flat, in numpy, and nothing else.

This is what later goes over the wire and into the chunk store, so it is a plain versioned
record that does not depend on Taichi: arrays are (dtype, shape, bytes) triples, small tables
use fixed strides given by the constants below, and `to_bytes`/`from_bytes` round-trip it
exactly. Triangles are stored in BVH leaf order, so a leaf's triangles are one contiguous range.

Layouts
  materials   float32 (M, MAT_STRIDE): see MAT_* offsets.
  camera      float32 (CAM_STRIDE,):   see CAM_* offsets.
  bvh_bounds  float32 (N, 6): min xyz, max xyz.
  bvh_links   int32   (N, 2): interior: (index of right child, 0) with the left child at i + 1;
                              leaf: (first triangle, triangle count >= 1).
  tex_info    int32   (K, 3): (first texel, width, height) per image; texels are rows top to bottom.
  tex_refs    float32 (R, TEXREF_STRIDE): how a material slot samples an image (see TEXREF_*):
                              the image, wrap modes, sRGB or linear texels, a 2x3 UV transform.
  tangents    float32 (V, 4) or (0, 4): per vertex tangent xyz and handedness w (glTF's TANGENT),
                              present when some material has a normal map.
  env_info    int32   (3,):   (width, height, has_image).
  env_params  float32 (5,):   rgb scale, rotation deg about +y, the image's sampling normaliser.
  env_cond_cdf float32 (H*W,): per texel row, the running sum over columns of the bilinear
                              luminance x sin(theta) density's cells (kernels/lights.py says how).
  env_marg_cdf float32 (H+1,): inclusive CDF over the H+1 latitude bands between row centres
                              (and the poles), last entry 1.
  lights      float32 (L, LIGHT_STRIDE): point, spot and directional lights, see LIGHT_*;
                              directional lights with an angular radius (suns) come first.
  light_pick  float32 (2,):   P(pick the environment), P(pick an emissive triangle) in NEE; the
                              punctual lights share the rest (LIGHT_PICK per row).

Meshes are concatenated in a canonical order (by a digest of their content), so the arrays do
not depend on file names, paths or the order a scene file lists its meshes in.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
import numpy as np
from msgspec import Meta

from .bvh import DEPTH_MAX
from .bvh_wide import FIRST_TRI_MAX, LEAF_TRIS_LINKED
from .settings import RenderSettings

FORMAT_VERSION = 4  # 2: mesh_vertex_ranges; 3: materials and lights of Step 8; 4: glTF texture slots

# One row per material; the kernel's BSDFs (kernels/bsdf.py) read the fields their kind uses.
MAT_STRIDE = 64
MAT_KIND = 0  # KIND_* below
MAT_BASE = 1  # rgb at 1..3
MAT_BASE_TEX = 4  # texture index or -1
MAT_ROUGHNESS = 5  # perceptual; GGX alpha = roughness**2; 0 is smooth (a delta lobe)
MAT_EMIT = 6  # rgb radiance at 6..8
MAT_EMIT_TWO_SIDED = 9
MAT_TWO_SIDED = 10  # 1: reflect on both sides (diffuse, conductor, plastic); 0: the back is black
MAT_FRESNEL = 11  # conductor: FRESNEL_* below
MAT_ETA = 12  # rgb at 12..14: conductor's complex index, real part
MAT_K = 15  # rgb at 15..17: conductor's complex index, imaginary part
MAT_IOR = 18  # dielectric, plastic: interior over exterior index
MAT_THIN = 19  # dielectric: 1 for a thin pane
MAT_COAT_RINT = 20  # plastic: the coat's internal diffuse reflectance (scene.materials.coat_tables)
MAT_COAT_TABLE = 21  # plastic, rough: the coat's transmittance at cos = i / (COAT_TABLE_SIZE - 1)
COAT_TABLE_SIZE = 32  # at 21..52: linear in cos, within 1e-3 of the integral (Mitsuba keeps 64)
# glTF's slots (any kind may use them; texture slots hold a tex_refs row or -1)
MAT_METALLIC = 53  # gltf: metallic factor (x the metallic-roughness texture's B)
MAT_MR_TEX = 54  # gltf: metallic-roughness texture (G roughness, B metallic; linear)
MAT_NORMAL_TEX = 55  # tangent-space normal map (linear), needs `tangents`
MAT_NORMAL_SCALE = 56  # the normal map's x and y scale
MAT_EMIT_TEX = 57  # emissive texture (sRGB), times MAT_EMIT
MAT_ALPHA_MODE = 58  # ALPHA_* below
MAT_ALPHA_CUTOFF = 59  # mask: alpha below this passes through
MAT_ALPHA = 60  # base colour alpha factor (x MAT_ALPHA_TEX)
MAT_ALPHA_TEX = 61  # the base colour texture's alpha as an image (linear, in every channel) or -1
ALPHA_OPAQUE = 0
ALPHA_MASK = 1
ALPHA_BLEND = 2  # stochastic: a hash of the sample's dimensions picks pass-through with 1 - alpha
ALPHA_MODES = {"opaque": ALPHA_OPAQUE, "mask": ALPHA_MASK, "blend": ALPHA_BLEND}
KIND_DIFFUSE = 0
KIND_CONDUCTOR = 1
KIND_DIELECTRIC = 2
KIND_PLASTIC = 3
KIND_GLTF = 4
KINDS = {
    "diffuse": KIND_DIFFUSE,
    "conductor": KIND_CONDUCTOR,
    "dielectric": KIND_DIELECTRIC,
    "plastic": KIND_PLASTIC,
    "gltf": KIND_GLTF,
}
FRESNEL_SCHLICK = 0
FRESNEL_COMPLEX = 1
FRESNEL_NONE = 2  # F = 1 (times base colour): a perfect mirror
FRESNELS = {"schlick": FRESNEL_SCHLICK, "complex": FRESNEL_COMPLEX, "none": FRESNEL_NONE}

# One row per (image, sampler, transform, colour space) a material slot uses.
TEXREF_STRIDE = 10
TEXREF_IMAGE = 0  # row of tex_info
TEXREF_WRAP_S = 1  # WRAP_* below, along u
TEXREF_WRAP_T = 2  # along v
TEXREF_SRGB = 3  # 1: texels are sRGB-encoded colour (base, emissive); 0: linear data (/ 255)
TEXREF_XFORM = 4  # 4..9: u' = a u + b v + c, v' = d u + e v + f (KHR_texture_transform)
WRAP_REPEAT = 0
WRAP_CLAMP = 1
WRAP_MIRROR = 2
WRAPS = {"repeat": WRAP_REPEAT, "clamp": WRAP_CLAMP, "mirror": WRAP_MIRROR}

LIGHT_STRIDE = 16
LIGHT_KIND = 0  # LIGHT_POINT, LIGHT_SPOT, LIGHT_SUN (directional)
LIGHT_POS = 1  # 1..3: position (point, spot)
LIGHT_DIR = 4  # 4..6: unit direction the light travels (spot axis; from the sun into the scene)
LIGHT_RGB = 7  # 7..9: intensity W/sr (point, spot); sun: irradiance W/m^2 (radius 0) or radiance
LIGHT_COS_OUTER = 10  # spot: cos(cutoff); sun: cos(angular radius)
LIGHT_COS_INNER = 11  # spot: cos(beam width)
LIGHT_ANGLE = 12  # spot: cutoff in radians; sun: 1 - cos(angular radius) (computed in float64)
LIGHT_INV_TRANSITION = 13  # spot: 1 / (cutoff - beam width) in 1/radians, 0 for a hard edge
LIGHT_CDF = 14  # the pick's inclusive CDF at this light (after the environment and triangles)
LIGHT_PICK = 15  # the probability NEE picks this light
LIGHT_POINT = 0
LIGHT_SPOT = 1
LIGHT_SUN = 2  # directional; LIGHT_ANGLE > 0 makes it a disc of directions

CAM_STRIDE = 16
CAM_POS = 0  # 0..2
CAM_RIGHT = 3  # 3..5, unit
CAM_UP = 6  # 6..8, unit
CAM_FORWARD = 9  # 9..11, unit
CAM_FOV_DEG = 12
CAM_FOV_AXIS = 13  # 0 x, 1 y, 2 smaller, 3 larger
CAM_LENS_RADIUS = 14
CAM_FOCUS_DIST = 15
FOV_AXES = ("x", "y", "smaller", "larger")
CAM_KEY_STRIDE = 13  # frame, position (3), look_at (3), up (3), fov_deg, aperture_radius, focus_distance

# Arrays, by name: dtype and trailing shape (None for the leading, variable dimension).
ARRAY_SPECS: dict[str, tuple[str, tuple[int, ...]]] = {
    "positions": ("float32", (3,)),
    "normals": ("float32", (3,)),  # zero vector: use the geometric normal
    "uvs": ("float32", (2,)),
    "indices": ("int32", (3,)),
    "tri_material": ("int32", ()),
    "materials": ("float32", (MAT_STRIDE,)),
    "bvh_bounds": ("float32", (6,)),
    "bvh_links": ("int32", (2,)),
    "emit_tri": ("int32", ()),  # emissive triangles, for next-event estimation
    "emit_cdf": ("float32", ()),  # inclusive CDF over emit_tri by power, last entry 1
    "tri_emit_pdf": ("float32", ()),  # per triangle: P(select) / area, 0 for non-emitters
    "tex_texels": ("uint8", (3,)),  # sRGB-encoded
    "tex_info": ("int32", (3,)),
    "tex_refs": ("float32", (TEXREF_STRIDE,)),  # how material slots sample the images
    "tangents": ("float32", (4,)),  # (V, 4) with normal maps, else (0, 4)
    "env_params": ("float32", ()),  # (5,): rgb scale, rotation deg about +y, sampling normaliser
    "env_texels": ("float32", (3,)),  # linear, >= 0, rows top (+y) to bottom
    "env_cond_cdf": ("float32", ()),  # per row: running sums of the density's cells over columns
    "env_marg_cdf": ("float32", ()),  # inclusive CDF over latitude bands, last entry 1
    "env_info": ("int32", ()),  # (width, height, has_image)
    "lights": ("float32", (LIGHT_STRIDE,)),  # point, spot, directional: see LIGHT_*
    "light_pick": ("float32", ()),  # (2,): P(environment), P(emissive triangles) in NEE
    "camera": ("float32", ()),
    "mesh_vertex_ranges": ("int32", (2,)),  # per mesh (canonical order): first vertex, vertex count
}

# Arrays only an animated scene has (a static scene's arrays, and so its id, stay as they were).
OPTIONAL_ARRAYS: dict[str, tuple[str, tuple[int, ...]]] = {
    "camera_keys": ("float32", (CAM_KEY_STRIDE,)),  # by frame; see scene.compile.camera_at
    "frames": ("int32", ()),  # (2,): the default frame range
}

ARRAY_BYTES_MAX = 1 << 34  # 16 GiB: refuse to allocate absurd arrays from a malformed record


MAT_TEX_SLOTS = (MAT_BASE_TEX, MAT_MR_TEX, MAT_NORMAL_TEX, MAT_EMIT_TEX, MAT_ALPHA_TEX)  # tex_refs rows or -1


def check_arrays(a: dict[str, np.ndarray]) -> None:
    """ValueError naming the first array whose contents the kernel could not use safely.

    A compiled scene may come from another peer, so every index the kernel follows is checked
    here, before anything renders it: vertex and material indices, BVH links (a tree: each node
    but the root has one parent, at a smaller index, so every traversal ends), leaf ranges,
    texture slots, texel ranges, emitter tables, the environment's tables and the fixed lengths
    of the small records. Anything out of range would make the kernel read outside its arrays
    (garbage, or a crash) or loop forever; shapes and dtypes are checked by CompiledScene."""

    def bad(name: str, why: str):
        raise ValueError(f"compiled array {name}: {why}")

    v, t, m = len(a["positions"]), len(a["indices"]), len(a["materials"])
    for name, want in (("normals", v), ("uvs", v), ("tri_material", t), ("tri_emit_pdf", t)):
        if len(a[name]) != want:
            bad(name, f"{len(a[name])} rows, not {want}")
    if len(a["tangents"]) not in (0, v):
        bad("tangents", f"{len(a['tangents'])} rows, not 0 or {v}")
    for name, want in (("camera", CAM_STRIDE), ("env_params", 5), ("env_info", 3), ("light_pick", 2)):
        if a[name].shape != (want,):
            bad(name, f"shape {a[name].shape}, not ({want},)")
    if "frames" in a and a["frames"].shape != (2,):
        bad("frames", f"shape {a['frames'].shape}, not (2,)")
    idx = a["indices"]
    if t and (idx.min() < 0 or idx.max() >= v):
        bad("indices", f"a vertex index outside 0..{v - 1}")
    tm = a["tri_material"]
    if t and (tm.min() < 0 or tm.max() >= m):
        bad("tri_material", f"a material index outside 0..{m - 1}")
    _check_bvh(a["bvh_links"], t, bad)
    if len(a["bvh_bounds"]) != len(a["bvh_links"]):
        bad("bvh_bounds", f"{len(a['bvh_bounds'])} rows for {len(a['bvh_links'])} nodes")
    refs = a["tex_refs"]
    slots = a["materials"][:, list(MAT_TEX_SLOTS)] if m else np.zeros((0, len(MAT_TEX_SLOTS)), np.float32)
    whole = np.isfinite(slots) & (slots == np.floor(np.nan_to_num(slots)))
    if slots.size and not np.all(whole & ((slots == -1) | ((slots >= 0) & (slots < len(refs))))):
        bad("materials", f"a texture slot that is neither -1 nor a row of tex_refs (0..{len(refs) - 1})")
    kinds = a["materials"][:, MAT_KIND] if m else np.zeros(0, np.float32)
    if not np.all(np.isin(kinds, list(KINDS.values()))):  # the kernel has a model for each
        bad("materials", f"a material kind that is none of {sorted(KINDS.values())}")
    if not len(a["tangents"]) and m and np.any(a["materials"][:, MAT_NORMAL_TEX] >= 0):
        bad("tangents", "none, but a material has a normal map")
    info, texels = a["tex_info"], len(a["tex_texels"])
    if len(refs):
        img = refs[:, TEXREF_IMAGE]
        if not (np.all(np.isfinite(img)) and np.all((img >= 0) & (img < len(info)) & (img == np.floor(img)))):
            bad("tex_refs", f"an image index outside 0..{len(info) - 1}")
    if len(info):
        first, w, h = (info[:, k].astype(np.int64) for k in range(3))
        if np.any(w < 1) or np.any(h < 1) or np.any(first < 0) or np.any(first + w * h > texels):
            bad("tex_info", f"an image that is empty or reaches past the {texels} texels")
    et = a["emit_tri"]
    if len(et) and (et.min() < 0 or et.max() >= t):
        bad("emit_tri", f"a triangle index outside 0..{t - 1}")
    if len(a["emit_cdf"]) != len(et):
        bad("emit_cdf", f"{len(a['emit_cdf'])} entries for {len(et)} emitters")
    ew, eh, has = (int(x) for x in a["env_info"])
    if has:
        if ew < 1 or eh < 1 or len(a["env_texels"]) != ew * eh:
            bad("env_texels", f"{len(a['env_texels'])} texels for a {ew}x{eh} image")
        if len(a["env_cond_cdf"]) != ew * eh or len(a["env_marg_cdf"]) != eh + 1:
            bad("env_cond_cdf", f"sampling tables that do not fit a {ew}x{eh} image")
    vr = a["mesh_vertex_ranges"].astype(np.int64)
    if len(vr) and (np.any(vr < 0) or np.any(vr[:, 0] + vr[:, 1] > v)):
        bad("mesh_vertex_ranges", f"a range past the {v} vertices")


def _check_bvh(links: np.ndarray, tris: int, bad) -> None:
    n = len(links)
    if n == 0:
        if tris:
            bad("bvh_links", f"no nodes for {tris} triangles")
        return
    a, b = links[:, 0].astype(np.int64), links[:, 1].astype(np.int64)
    leaf = b > 0  # leaf: (first triangle, count >= 1); interior: (right child, 0)
    if np.any(b < 0):
        bad("bvh_links", "a negative triangle count")
    if np.any(leaf & ((a < 0) | (a + b > tris))):
        bad("bvh_links", f"a leaf whose triangles reach past the {tris} triangles")
    if np.any(leaf & ((b > LEAF_TRIS_LINKED) | (a > FIRST_TRI_MAX))):  # what the kernel's tree can name
        bad("bvh_links", f"a leaf of more than {LEAF_TRIS_LINKED} triangles or past triangle {FIRST_TRI_MAX}")
    node = np.arange(n, dtype=np.int64)
    inner = ~leaf
    left, right = node[inner] + 1, a[inner]
    if np.any(left >= n) or np.any(right <= left) or np.any(right >= n):
        bad("bvh_links", "an interior node whose children are not later nodes of the tree")
    parents = np.bincount(np.concatenate([left, right]), minlength=n)
    if parents[0] != 0 or np.any(parents[1:] != 1):
        bad("bvh_links", "not a tree: a node with no parent or with more than one")
    level = np.zeros(1, np.int64)  # the root; then each level's nodes, at most DEPTH_MAX + 1 levels
    for _ in range(DEPTH_MAX):
        level = level[~leaf[level]]
        level = np.concatenate([level + 1, a[level]])
        if not len(level):
            break
    if len(level) and not np.all(leaf[level]):  # the kernel's traversal stack is sized for this
        bad("bvh_links", f"a tree deeper than {DEPTH_MAX} levels")


class ArrayRecord(msgspec.Struct, frozen=True, array_like=True):
    dtype: str
    shape: list[Annotated[int, Meta(ge=0)]]
    data: bytes


class SceneRecord(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    source: str
    arrays: dict[str, ArrayRecord]
    settings: RenderSettings
    mesh_names: list[str]
    material_names: list[str]
    texture_names: list[str]


class CompiledScene:
    """Flat arrays + defaults. Build with `meshrender.scene.compile.compile_scene`."""

    def __init__(
        self,
        *,
        source: str,
        arrays: dict[str, np.ndarray],
        settings: RenderSettings,
        mesh_names: list[str],
        material_names: list[str],
        texture_names: list[str],
    ):
        missing = set(ARRAY_SPECS) - set(arrays)
        extra = set(arrays) - set(ARRAY_SPECS) - set(OPTIONAL_ARRAYS)
        if missing or extra:
            raise ValueError(f"compiled scene arrays: missing {sorted(missing)}, unknown {sorted(extra)}")
        for name, arr in arrays.items():
            dtype, tail = ARRAY_SPECS.get(name) or OPTIONAL_ARRAYS[name]
            if arr.dtype != np.dtype(dtype) or tuple(arr.shape[1:]) != tail:
                raise ValueError(f"compiled array {name}: {arr.dtype}{arr.shape}, want {dtype}(N, *{tail})")
        check_arrays(arrays)
        self.source = source
        self.arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        self.settings = settings
        self.mesh_names = list(mesh_names)
        self.material_names = list(material_names)
        self.texture_names = list(texture_names)

    def __getattr__(self, name: str) -> np.ndarray:
        arrays = self.__dict__.get("arrays")
        if arrays is not None and name in arrays:
            return arrays[name]
        raise AttributeError(name)

    @property
    def triangle_count(self) -> int:
        return int(self.arrays["indices"].shape[0])

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    def to_bytes(self) -> bytes:
        rec = SceneRecord(
            version=FORMAT_VERSION,
            source=self.source,
            arrays={
                k: ArrayRecord(str(v.dtype), list(v.shape), v.tobytes())
                for k, v in sorted(self.arrays.items())
            },
            settings=self.settings,
            mesh_names=self.mesh_names,
            material_names=self.material_names,
            texture_names=self.texture_names,
        )
        return msgspec.msgpack.encode(rec)

    @classmethod
    def from_bytes(cls, blob: bytes) -> CompiledScene:
        rec = msgspec.msgpack.decode(blob, type=SceneRecord)
        if rec.version != FORMAT_VERSION:
            raise ValueError(f"compiled scene format {rec.version}, this build reads {FORMAT_VERSION}")
        arrays = {}
        for name, ar in rec.arrays.items():
            spec = ARRAY_SPECS.get(name) or OPTIONAL_ARRAYS.get(name)
            if spec is None or ar.dtype != spec[0]:
                what = f"compiled scene array {name!r} of dtype {ar.dtype!r}"
                raise ValueError(f"{what} is not in format {FORMAT_VERSION}")
            count = int(np.prod(ar.shape, dtype=np.int64))
            itemsize = np.dtype(ar.dtype).itemsize
            if count * itemsize > ARRAY_BYTES_MAX or count * itemsize != len(ar.data):
                raise ValueError(f"compiled scene array {name!r}: shape {ar.shape} does not match its bytes")
            arrays[name] = np.frombuffer(ar.data, dtype=ar.dtype).reshape(ar.shape).copy()
        return cls(
            source=rec.source,
            arrays=arrays,
            settings=rec.settings,
            mesh_names=rec.mesh_names,
            material_names=rec.material_names,
            texture_names=rec.texture_names,
        )

    @property
    def frames(self) -> tuple[int, int]:
        """The frames a job of this scene renders by default."""
        f = self.arrays.get("frames")
        return (0, 0) if f is None else (int(f[0]), int(f[1]))

    @property
    def animated(self) -> bool:
        return "camera_keys" in self.arrays

    def equals(self, other: CompiledScene) -> bool:
        return self.to_bytes() == other.to_bytes()
