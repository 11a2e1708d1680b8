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
  tex_info    int32   (K, 3): (first texel, width, height); texels are rows top to bottom.
  env_info    int32   (3,):   (width, height, has_image).

Meshes are concatenated in a canonical order (by a digest of their content), so the arrays do
not depend on file names, paths or the order a scene file lists its meshes in.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
import numpy as np
from msgspec import Meta

from .settings import RenderSettings

FORMAT_VERSION = 2  # 2: mesh_vertex_ranges

MAT_STRIDE = 16
MAT_KIND = 0  # 0 diffuse, 1 rough conductor (GGX)
MAT_BASE = 1  # rgb at 1..3
MAT_BASE_TEX = 4  # texture index or -1
MAT_ROUGHNESS = 5  # GGX alpha = roughness**2
MAT_EMIT = 6  # rgb radiance at 6..8
MAT_EMIT_TWO_SIDED = 9
KIND_DIFFUSE = 0
KIND_CONDUCTOR = 1

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
    "env_params": (
        "float32",
        (),
    ),  # (4,): rgb scale (the whole light without an image), rotation deg about +y
    "env_texels": ("float32", (3,)),  # linear, rows top (+y) to bottom
    "env_cdf": ("float32", ()),  # inclusive CDF over env texels by luminance * sin(theta)
    "env_info": ("int32", ()),  # (width, height, has_image)
    "camera": ("float32", ()),
    "mesh_vertex_ranges": ("int32", (2,)),  # per mesh (canonical order): first vertex, vertex count
}

# Arrays only an animated scene has (a static scene's arrays, and so its id, stay as they were).
OPTIONAL_ARRAYS: dict[str, tuple[str, tuple[int, ...]]] = {
    "camera_keys": ("float32", (CAM_KEY_STRIDE,)),  # by frame; see scene.compile.camera_at
    "frames": ("int32", ()),  # (2,): the default frame range
}

ARRAY_BYTES_MAX = 1 << 34  # 16 GiB: refuse to allocate absurd arrays from a malformed record


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
