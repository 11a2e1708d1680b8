"""Writes tests/data/gltf_materials/: a small glTF 2.0 asset of unit quads, one glTF material
feature each, for the loader and render tests of tests/test_scene_gltf.py.

Every quad lies in z = 0 facing +z, x in [0, W] and y in [0, 1]; its u runs from 0 to U along
x and v = 1 - y (glTF's v runs down the image). Images are 2 x 1
texels (left, right), so a feature's two halves differ where the texels do; bilinear filtering
blends them only around the texel centres' midpoint. The images live in the .bin (bufferView
images) except the RGBA cut-out image, a separate PNG (an external image with an alpha channel).

Meshes (by name) and what they carry:
  WrapRepeat, WrapClamp, WrapMirror   2 x 1 quads, u in [0, 2]: an emissive texture of a black
                                      and an orange (255, 128, 0) texel, sampled repeat, clamped
                                      to edge, mirrored repeat.
  Offset                              1 x 1, the same texture (repeat) shifted by
                                      KHR_texture_transform offset (0.5, 0).
  NormalMap                           1 x 1, grey gltf material; normal map texels: left tilted
                                      towards +u (+x), right towards image-up (+y), scale 1.
  NormalFlat                          the same map with scale 0 (no tilt).
  MetalRough                          1 x 1, metallic-roughness texels: left metal (B 255) of
                                      roughness 0.2 (G 51), right dielectric of roughness 1.
  Mask                                1 x 1, base colour alpha left 0, right 255, MASK cutoff 0.5.
  Blend                               1 x 1, black, alpha factor 0.25, BLEND.
  Glass, GlassVolume                  transmission 1 + ior 1.5: thin-walled, and with
                                      KHR_materials_volume thickness 0.1 (a solid).
  Emissive                            emissiveFactor (1, 1, 1) x strength 4 x the orange texture.

Run `python tests/gltf_materials.py` to write the folder again; a test checks it matches.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(__file__).resolve().parent / "data" / "gltf_materials"
NAME = "materials"
ORANGE = (255, 128, 0)


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


def _texels(*rgb) -> np.ndarray:
    return np.array([list(rgb)], np.uint8)  # 1 row, len(rgb) texels


def _quad(width: float, u_max: float):
    pos = np.array([[0, 0, 0], [width, 0, 0], [width, 1, 0], [0, 1, 0]], np.float32)
    nrm = np.tile(np.float32([0, 0, 1]), (4, 1))
    uv = np.array([[0, 1], [u_max, 1], [u_max, 0], [0, 0]], np.float32)
    idx = np.array([0, 1, 2, 0, 2, 3], np.uint16)
    return pos, nrm, uv, idx


class _Doc:
    def __init__(self):
        self.bin = bytearray()
        self.doc: dict = {
            "asset": {"version": "2.0", "generator": "meshrender tests/gltf_materials.py"},
            "extensionsUsed": [
                "KHR_texture_transform",
                "KHR_materials_emissive_strength",
                "KHR_materials_transmission",
                "KHR_materials_ior",
                "KHR_materials_volume",
            ],
            "scene": 0,
            "scenes": [{"nodes": []}],
        }
        for k in ("nodes", "meshes", "accessors", "bufferViews", "materials", "textures", "images"):
            self.doc[k] = []
        self.doc["samplers"] = []

    def view(self, data: bytes) -> int:
        self.bin += b"\0" * (-len(self.bin) % 4)
        self.doc["bufferViews"].append({"buffer": 0, "byteOffset": len(self.bin), "byteLength": len(data)})
        self.bin += data
        return len(self.doc["bufferViews"]) - 1

    def accessor(self, arr: np.ndarray, type_: str, ctype: int) -> int:
        acc = {"bufferView": self.view(arr.tobytes()), "componentType": ctype, "type": type_}
        acc["count"] = len(arr)
        if type_ == "VEC3":
            acc["min"], acc["max"] = arr.min(0).tolist(), arr.max(0).tolist()
        self.doc["accessors"].append(acc)
        return len(self.doc["accessors"]) - 1

    def image(self, pixels: np.ndarray, uri: str | None = None) -> int:
        if uri is None:
            self.doc["images"].append({"bufferView": self.view(_png(pixels)), "mimeType": "image/png"})
        else:
            self.doc["images"].append({"uri": uri})
        return len(self.doc["images"]) - 1

    def texture(self, image: int, wrap: int = 10497) -> int:
        self.doc["samplers"].append({"magFilter": 9729, "minFilter": 9729, "wrapS": wrap, "wrapT": wrap})
        self.doc["textures"].append({"source": image, "sampler": len(self.doc["samplers"]) - 1})
        return len(self.doc["textures"]) - 1

    def material(self, **m) -> int:
        self.doc["materials"].append(m)
        return len(self.doc["materials"]) - 1

    def quad(self, name: str, material: int, width: float = 1.0, u_max: float = 1.0) -> None:
        pos, nrm, uv, idx = _quad(width, u_max)
        attrs = {
            "POSITION": self.accessor(pos, "VEC3", 5126),
            "NORMAL": self.accessor(nrm, "VEC3", 5126),
            "TEXCOORD_0": self.accessor(uv, "VEC2", 5126),
        }
        prim = {"attributes": attrs, "indices": self.accessor(idx, "SCALAR", 5123), "material": material}
        self.doc["meshes"].append({"name": name, "primitives": [prim]})
        self.doc["nodes"].append({"name": name, "mesh": len(self.doc["meshes"]) - 1})
        self.doc["scenes"][0]["nodes"].append(len(self.doc["nodes"]) - 1)


def _document() -> tuple[_Doc, dict[str, bytes]]:
    d = _Doc()
    files = {"cutout.png": _png(np.array([[[200, 40, 40, 0], [200, 40, 40, 255]]], np.uint8))}
    orange = d.image(_texels((0, 0, 0), ORANGE))
    for name, wrap in (("WrapRepeat", 10497), ("WrapClamp", 33071), ("WrapMirror", 33648)):
        t = d.texture(orange, wrap)
        m = d.material(name=name, emissiveFactor=[1, 1, 1], emissiveTexture={"index": t},
                       pbrMetallicRoughness={"baseColorFactor": [0, 0, 0, 1]})  # fmt: skip
        d.quad(name, m, width=2.0, u_max=2.0)
    shift = {"KHR_texture_transform": {"offset": [0.5, 0]}}
    m = d.material(name="Offset", emissiveFactor=[1, 1, 1],
                   emissiveTexture={"index": d.texture(orange), "extensions": shift},
                   pbrMetallicRoughness={"baseColorFactor": [0, 0, 0, 1]})  # fmt: skip
    d.quad("Offset", m)
    # tangent-space normals (0.6, 0, 0.8) and (0, 0.6, 0.8), stored as (n + 1) / 2
    tilt = d.texture(d.image(_texels((204, 128, 230), (128, 204, 230))), 33071)
    grey = {"baseColorFactor": [0.8, 0.8, 0.8, 1], "metallicFactor": 0.0, "roughnessFactor": 1.0}
    d.quad("NormalMap", d.material(name="NormalMap", pbrMetallicRoughness=grey,
                                   normalTexture={"index": tilt, "scale": 1.0}))  # fmt: skip
    d.quad("NormalFlat", d.material(name="NormalFlat", pbrMetallicRoughness=grey,
                                    normalTexture={"index": tilt, "scale": 0.0}))  # fmt: skip
    mr = d.texture(d.image(_texels((0, 51, 255), (0, 255, 0))), 33071)
    pbr = {"baseColorFactor": [0.9, 0.9, 0.9, 1], "metallicFactor": 1.0, "roughnessFactor": 1.0,
           "metallicRoughnessTexture": {"index": mr}}  # fmt: skip
    d.quad("MetalRough", d.material(name="MetalRough", pbrMetallicRoughness=pbr))
    cut = d.texture(d.image(None, uri="cutout.png"), 33071)
    pbr = {"baseColorTexture": {"index": cut}, "metallicFactor": 0.0}
    d.quad("Mask", d.material(name="Mask", alphaMode="MASK", alphaCutoff=0.5, doubleSided=True,
                              pbrMetallicRoughness=pbr))  # fmt: skip
    pbr = {"baseColorFactor": [0, 0, 0, 0.25], "metallicFactor": 0.0}
    d.quad("Blend", d.material(name="Blend", alphaMode="BLEND", doubleSided=True, pbrMetallicRoughness=pbr))
    glass = {"KHR_materials_transmission": {"transmissionFactor": 1.0}, "KHR_materials_ior": {"ior": 1.5}}
    clear = {"baseColorFactor": [1, 1, 1, 1], "metallicFactor": 0.0, "roughnessFactor": 0.0}
    d.quad("Glass", d.material(name="Glass", pbrMetallicRoughness=clear, extensions=glass))
    solid = dict(glass, KHR_materials_volume={"thicknessFactor": 0.1})
    d.quad("GlassVolume", d.material(name="GlassVolume", pbrMetallicRoughness=clear, extensions=solid))
    lamp = {"KHR_materials_emissive_strength": {"emissiveStrength": 4.0}}
    d.quad("Emissive", d.material(name="Emissive", emissiveFactor=[1, 1, 1], extensions=lamp,
                                  emissiveTexture={"index": d.texture(orange, 33071)},
                                  pbrMetallicRoughness={"baseColorFactor": [0, 0, 0, 1]}))  # fmt: skip
    return d, files


def write_materials(folder: Path) -> Path:
    """Write materials.gltf, materials.bin and cutout.png into `folder`; returns the .gltf path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    d, files = _document()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / f"{NAME}.bin").write_bytes(bytes(d.bin))
    doc = dict(d.doc, buffers=[{"uri": f"{NAME}.bin", "byteLength": len(d.bin)}])
    (folder / f"{NAME}.gltf").write_text(json.dumps(doc, indent=1) + "\n")
    return folder / f"{NAME}.gltf"


if __name__ == "__main__":
    out = write_materials(Path(sys.argv[1]) if len(sys.argv) > 1 else DATA)
    print(f"wrote {out.parent}: {sum(p.stat().st_size for p in out.parent.iterdir()):,} bytes")
