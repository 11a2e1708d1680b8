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

MaterialKind = Literal["diffuse", "conductor", "dielectric", "plastic", "gltf"]
Rgb = tuple[float, float, float]


@dataclass
class TextureImage:
    """An image texture. `pixels` is (H, W, 3): uint8 sRGB-encoded, or float32 linear."""

    name: str
    pixels: np.ndarray


Wrap = Literal["repeat", "clamp", "mirror"]
IDENTITY_UV = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@dataclass(frozen=True)
class TextureSampler:
    """How one material slot reads its image: wrap modes along u and v (glTF's sampler) and a
    2x3 UV transform, u' = a u + b v + c, v' = d u + e v + f (KHR_texture_transform). Filtering
    is always bilinear."""

    wrap_s: Wrap = "repeat"
    wrap_t: Wrap = "repeat"
    transform: tuple[float, float, float, float, float, float] = IDENTITY_UV


@dataclass
class MaterialDesc:
    """A surface. What each field means for each `kind` (the kernel's opening comment has the
    models): `roughness` is perceptual, GGX alpha = roughness**2 (0 is a smooth, delta lobe).

      diffuse     Lambert, reflectance `base_color` (x texture).
      conductor   GGX metal. Fresnel: "schlick" with F0 = base_color (x texture), "complex" with
                  `eta` + i `k` per channel (presets in scene.materials), or "none" (F = 1, a
                  perfect mirror); `base_color` scales the complex/none Fresnel (1 = physical).
      dielectric  glass/water: smooth (roughness 0) or rough GGX (Walter et al. 2007), `ior` is
                  the interior's index over the exterior's; `thin` is a pane (no refraction
                  offset, two interfaces); `base_color` tints the transmission (1 = clear).
      plastic     a smooth or rough dielectric coat (`ior`, `roughness`) over a Lambert base of
                  `base_color` (Mitsuba's plastic/roughplastic).
      gltf        glTF 2.0's metallic-roughness (its Appendix B): a GGX metal of F0 = base colour
                  mixed by `metallic` with a dielectric GGX (F0 0.04) over Lambert; `roughness` and
                  `metallic` are times the metallic-roughness texture's G and B per texel.
    glTF's texture slots (any kind reads them; `samplers` maps a slot name, "base_color",
    "metallic_roughness", "normal", "emission", "alpha", to its TextureSampler, default repeat):
    base colour and emission textures are sRGB colour, the others linear data. `alpha_mode`
    "mask" lets light through where alpha < `alpha_cutoff`, "blend" with probability 1 - alpha
    (alpha = `alpha` x `alpha_texture`, the base colour image's alpha channel).
    `two_sided`: False (the default, as Mitsuba) leaves the back side of diffuse, conductor and
    plastic surfaces black; dielectrics are always two-sided (they have an inside).
    """

    name: str
    kind: MaterialKind = "diffuse"
    base_color: Rgb = (0.8, 0.8, 0.8)
    base_color_texture: TextureImage | None = None
    roughness: float = 0.5  # perceptual; GGX alpha = roughness**2
    emission: Rgb = (0.0, 0.0, 0.0)  # radiance, W/(m^2 sr) per channel
    two_sided_emission: bool = False  # one-sided emitters emit on the side of the face normal
    two_sided: bool = False  # reflect on both sides (diffuse, conductor, plastic)
    fresnel: Literal["schlick", "complex", "none"] = "schlick"  # conductor only
    eta: Rgb = (0.0, 0.0, 0.0)  # conductor, fresnel "complex": real part of the IOR per channel
    k: Rgb = (0.0, 0.0, 0.0)  # conductor, fresnel "complex": imaginary part (extinction)
    ior: float = 1.5  # dielectric and plastic: interior over exterior index of refraction
    thin: bool = False  # dielectric only: a thin pane
    metallic: float = 0.0  # gltf only
    metallic_roughness_texture: TextureImage | None = None  # G roughness, B metallic (linear)
    normal_texture: TextureImage | None = None  # tangent space, linear; the mesh needs uvs
    normal_scale: float = 1.0
    emission_texture: TextureImage | None = None  # sRGB, times `emission`
    alpha_mode: Literal["opaque", "mask", "blend"] = "opaque"
    alpha_cutoff: float = 0.5
    alpha: float = 1.0
    alpha_texture: TextureImage | None = None  # (H, W, 3) uint8, alpha in every channel
    samplers: dict[str, TextureSampler] = field(default_factory=dict)

    def textures(self) -> list[tuple[str, TextureImage]]:
        """(slot, image) of every texture slot in use, in a fixed order."""
        slots = (
            ("base_color", self.base_color_texture),
            ("metallic_roughness", self.metallic_roughness_texture),
            ("normal", self.normal_texture),
            ("emission", self.emission_texture),
            ("alpha", self.alpha_texture),
        )
        return [(s, t) for s, t in slots if t is not None]

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
    tangents: np.ndarray | None = None  # (V, 4) float32: xyz and handedness w, for normal maps


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


LightKind = Literal["point", "spot", "directional"]


@dataclass
class LightDesc:
    """A light with no surface (delta position or delta direction), Mitsuba's conventions:

    point        at `position`, `intensity` W/sr per channel, in every direction;
    spot         at `position`, shining along `direction`: `intensity` W/sr inside
                 `beam_width_deg`, falling linearly in angle to 0 at `cutoff_deg` (Mitsuba's spot);
    directional  light travelling along `direction` (from the sun towards the scene),
                 `irradiance` W/m^2 per channel on a surface facing it; `angular_radius_deg`
                 > 0 makes it a disc of that angular radius (a sun with soft shadows).
    """

    kind: LightKind
    position: Rgb = (0.0, 0.0, 0.0)
    direction: Rgb = (0.0, -1.0, 0.0)
    intensity: Rgb = (1.0, 1.0, 1.0)  # point, spot: W/sr; directional: irradiance W/m^2
    cutoff_deg: float = 20.0  # spot
    beam_width_deg: float = 15.0  # spot
    angular_radius_deg: float = 0.0  # directional


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
    lights: list[LightDesc] = field(default_factory=list)  # point, spot and directional lights
    inputs: list[str] = field(default_factory=list)  # the files loading read (real paths), for watchers
