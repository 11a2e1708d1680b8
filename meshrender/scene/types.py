"""What loaders produce: meshes, materials, textures, camera and environment in world space.

Loaders (OBJ, PLY, glTF, the TOML scene file) turn user files into these plain objects; the
compiler (`meshrender.scene.compile`) flattens them into a `CompiledScene`. Nothing here knows
about files after loading: every array is already in memory, every name is for humans.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..settings import RenderSettings

MaterialKind = Literal["diffuse", "conductor"]


@dataclass
class TextureImage:
    """An image texture. `pixels` is (H, W, 3): uint8 sRGB-encoded, or float32 linear."""

    name: str
    pixels: np.ndarray


@dataclass
class MaterialDesc:
    name: str
    kind: MaterialKind = "diffuse"
    base_color: tuple[float, float, float] = (0.8, 0.8, 0.8)
    base_color_texture: TextureImage | None = None
    roughness: float = 0.5  # perceptual; GGX alpha = roughness**2 (conductor only)
    emission: tuple[float, float, float] = (0.0, 0.0, 0.0)  # radiance, W/(m^2 sr) per channel
    two_sided_emission: bool = False  # one-sided emitters emit on the side of the face normal

    @property
    def is_emissive(self) -> bool:
        return max(self.emission) > 0.0


@dataclass
class MeshData:
    """Triangles in world space. Counter-clockwise winding defines the front (face normal)."""

    name: str  # for humans: "meshes/floor.obj", "FlightHelmet.gltf:Hose_low"
    positions: np.ndarray  # (V, 3) float32
    indices: np.ndarray  # (T, 3) int32
    material_ids: np.ndarray  # (T,) int32, indices into `materials`
    materials: list[MaterialDesc]
    normals: np.ndarray | None = None  # (V, 3) float32 shading normals; None: flat shading
    uvs: np.ndarray | None = None  # (V, 2) float32, glTF convention (v down from top-left)


@dataclass
class CameraDesc:
    position: tuple[float, float, float] = (0.0, 0.0, 5.0)
    look_at: tuple[float, float, float] = (0.0, 0.0, 0.0)
    up: tuple[float, float, float] = (0.0, 1.0, 0.0)
    fov_deg: float = 40.0
    fov_axis: Literal["x", "y", "smaller", "larger"] = "smaller"
    aperture_radius: float = 0.0  # thin lens; 0 is a pinhole
    focus_distance: float = 0.0  # 0: the distance from position to look_at


@dataclass
class EnvironmentDesc:
    """Light from infinitely far away: a constant colour, or an equirect image times `color`."""

    color: tuple[float, float, float] = (0.0, 0.0, 0.0)
    image: TextureImage | None = None  # float32 linear (H, W, 3), latitude-longitude, +y up
    rotation_deg: float = 0.0  # about +y


@dataclass
class LoadedScene:
    source: str  # the scene file, mesh file, or "builtin:NAME"
    meshes: list[MeshData]
    camera: CameraDesc
    environment: EnvironmentDesc
    settings: RenderSettings = field(default_factory=RenderSettings)
    # What loading ignored or repaired (e.g. glTF normal maps, skins), for humans; not rendered.
    warnings: list[str] = field(default_factory=list)
    camera_keys: list[tuple[int, CameraDesc]] = field(default_factory=list)  # an animated camera
    frames: tuple[int, int] | None = None  # the default frame range, when the scene file says
