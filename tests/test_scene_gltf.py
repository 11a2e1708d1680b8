"""glTF loader: GLB/.gltf containers, the node graph, accessors, primitive modes, materials and
textures, and refusals of what we cannot render (each naming the file and the feature)."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import gltf_materials
import numpy as np
import pytest
import textured
from conftest import REPO, TEXTURED
from PIL import Image

from meshrender.compiled import (
    MAT_ALPHA_TEX,
    MAT_BASE_TEX,
    MAT_EMIT_TEX,
    MAT_MR_TEX,
    MAT_NORMAL_TEX,
    TEXREF_SRGB,
)
from meshrender.errors import MissingAssetsError, SceneError
from meshrender.render import render_frame
from meshrender.scene.compile import compile_scene
from meshrender.scene.gltf import load_gltf
from meshrender.scene.load import load_scene
from meshrender.scene.types import CameraDesc, EnvironmentDesc, LightDesc, LoadedScene, MaterialDesc, MeshData
from meshrender.settings import RenderSettings

TRI = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)  # CCW seen from +z


class Gltf:
    """Builds a glTF document and its binary buffer, written as .glb or .gltf."""

    def __init__(self):
        self.doc = {
            "asset": {"version": "2.0"},
            "scene": 0,
            "scenes": [{"nodes": []}],
            "nodes": [],
            "meshes": [],
            "accessors": [],
            "bufferViews": [],
            "buffers": [],
        }
        self.bin = bytearray()

    def view(self, data: bytes, stride: int | None = None) -> int:
        self.bin += b"\0" * (-len(self.bin) % 4)
        bv = {"buffer": 0, "byteOffset": len(self.bin), "byteLength": len(data)}
        if stride:
            bv["byteStride"] = stride
        self.bin += data
        self.doc["bufferViews"].append(bv)
        return len(self.doc["bufferViews"]) - 1

    def accessor(
        self, arr, type_: str, ctype: int | None = None, normalized=False, view=None, offset=0, count=None
    ) -> int:
        arr = np.asarray(arr)
        ctype = ctype or {np.float32: 5126, np.uint16: 5123, np.uint32: 5125, np.uint8: 5121}[arr.dtype.type]
        if view is None:
            view = self.view(arr.tobytes())
        acc = {
            "bufferView": view,
            "byteOffset": offset,
            "componentType": ctype,
            "type": type_,
            "count": count if count is not None else len(arr),
        }
        if normalized:
            acc["normalized"] = True
        self.doc["accessors"].append(acc)
        return len(self.doc["accessors"]) - 1

    def mesh(self, prims: list[dict], name="m") -> int:
        self.doc["meshes"].append({"name": name, "primitives": prims})
        return len(self.doc["meshes"]) - 1

    def node(self, root=True, **kw) -> int:
        self.doc["nodes"].append(kw)
        i = len(self.doc["nodes"]) - 1
        if root:
            self.doc["scenes"][0]["nodes"].append(i)
        return i

    def glb(self, path: Path) -> Path:
        self.doc["buffers"] = [{"byteLength": len(self.bin)}] if self.bin else []
        j = json.dumps(self.doc).encode()
        j += b" " * (-len(j) % 4)
        b = bytes(self.bin) + b"\0" * (-len(self.bin) % 4)
        chunks = struct.pack("<II", len(j), 0x4E4F534A) + j
        if b:
            chunks += struct.pack("<II", len(b), 0x004E4942) + b
        path.write_bytes(struct.pack("<4sII", b"glTF", 2, 12 + len(chunks)) + chunks)
        return path

    def gltf(self, path: Path, embed=False) -> Path:
        if embed:
            uri = "data:application/octet-stream;base64," + base64.b64encode(bytes(self.bin)).decode()
        else:
            uri = path.stem + ".bin"
            (path.parent / uri).write_bytes(bytes(self.bin))
        self.doc["buffers"] = [{"byteLength": len(self.bin), "uri": uri}]
        path.write_text(json.dumps(self.doc))
        return path


def one_triangle(g: Gltf, **node) -> Gltf:
    pos = g.accessor(TRI, "VEC3")
    nrm = g.accessor(np.tile(np.float32([0, 0, 1]), (3, 1)), "VEC3")
    idx = g.accessor(np.array([0, 1, 2], np.uint16), "SCALAR")
    g.node(mesh=g.mesh([{"attributes": {"POSITION": pos, "NORMAL": nrm}, "indices": idx}]), **node)
    return g


def face_normal(m, t=0):
    a, b, c = m.positions[m.indices[t]].astype(np.float64)
    n = np.cross(b - a, c - a)
    return n / np.linalg.norm(n)


def png_bytes(color=(10, 200, 30, 128), size=(2, 2)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", size, color).save(buf, format="PNG")
    return buf.getvalue()


def yaw(deg: float, p) -> np.ndarray:
    """p turned by deg about +y (glTF is right-handed: +x goes to -z)."""
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]) @ np.asarray(p, np.float64)


def centre(m) -> np.ndarray:
    return (m.positions.min(0).astype(np.float64) + m.positions.max(0)) / 2


def test_textured_asset():
    """The committed textured asset (tests/textured.py): every mesh, material, texture and node
    transform as written, the glTF slots kept per texel, and what we ignore warned."""
    warnings = []
    meshes = load_gltf(TEXTURED, warnings=warnings)
    assert [m.name for m in meshes] == [f"textured.gltf:{n}" for n in textured.MESHES]
    assert [len(m.indices) for m in meshes] == [textured.TRIANGLES[n] for n in textured.MESHES]
    for m in meshes:
        assert np.isfinite(m.positions).all() and np.isfinite(m.uvs).all() and np.isfinite(m.normals).all()
        assert m.indices.max() < len(m.positions) and m.uvs.shape == (len(m.positions), 2)
        for mat in m.materials:
            tex = mat.base_color_texture
            assert tex is not None and tex.pixels.dtype == np.uint8 and tex.pixels.shape[2] == 3
        # winding and normals agree on every triangle with an area, the mirrored lens included
        p = m.positions[m.indices].astype(np.float64)
        face = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
        solid = np.linalg.norm(face, axis=1) > 1e-12
        assert ((face * m.normals[m.indices].sum(1)).sum(1)[solid] > 0).all(), m.name
    by = {m.name.split(":")[1]: m for m in meshes}
    mats = {x.name: x for m in meshes for x in m.materials}
    # metallic-roughness read per texel in the kernel: the factors (1, 1) and the linear texture
    metal, leather = mats["MetalMat"], mats["LeatherMat"]
    assert (metal.kind, metal.metallic, metal.roughness) == ("gltf", 1.0, 1.0)
    assert metal.metallic_roughness_texture.pixels[0, 0].tolist() == [255, 77, 242]
    assert leather.metallic_roughness_texture.pixels[0, 0].tolist() == [255, 204, 10]
    assert metal.normal_texture is leather.normal_texture is not None  # one image, loaded once
    assert mats["GlassMat"].alpha_mode == "blend" and mats["GlassMat"].alpha == pytest.approx(0.4)
    assert mats["LensMat"].base_color == pytest.approx((0.5, 0.8, 1.0))
    assert mats["LensMat"].base_color_texture is mats["GlassMat"].base_color_texture  # one image, loaded once
    strap = by["Strap"]  # two primitives, two materials, 12 triangles each
    assert [x.name for x in strap.materials] == ["RubberMat", "MetalMat"]
    assert np.bincount(strap.material_ids).tolist() == [12, 12]
    rubber = mats["RubberMat"].base_color_texture.pixels
    assert rubber.shape == (64, 128, 3) and (rubber[:, 60:68] == (240, 220, 40)).all()  # a column stays one
    # node transforms: the stand's matrix, the helmet's translation and turn, the frame's scale
    np.testing.assert_allclose(by["Stand"].positions.min(0), [-0.6, 0, -0.4], atol=1e-6)
    np.testing.assert_allclose(by["Stand"].positions.max(0), [0.6, 0.1, 0.4], atol=1e-6)
    frame_y = by["Frame"].positions[:, 1]
    assert frame_y.min() == pytest.approx(0.45 - 0.015, abs=1e-6) and frame_y.max() == pytest.approx(0.465)
    left, right = (m for m in meshes if m.name.endswith(":Lens"))
    for m, x in ((left, 0.12), (right, -0.12)):
        want = yaw(textured.ROOT_YAW_DEG, [x, 0.45, 0.3 + 0.015]) + textured.ROOT_T
        np.testing.assert_allclose(centre(m), want, atol=1e-6)
    assert by["Dome"].tangents is not None and by["Lens"].tangents is None  # normal-mapped meshes only
    t = by["Dome"].tangents
    assert np.allclose(np.linalg.norm(t[:, :3], axis=1), 1, atol=1e-5) and set(np.unique(t[:, 3])) <= {-1, 1}
    assert np.abs((t[:, :3] * by["Dome"].normals).sum(1)).max() < 1e-4  # perpendicular to the normal
    text = "\n".join(warnings)
    assert "occlusionTexture" in text, text
    for what in ("normalTexture", "alphaMode", "metallicRoughnessTexture"):
        assert what not in text, text


def test_textured_glb_is_the_same_asset():
    """The .glb (buffer and images inside) loads to exactly what the .gltf and its files give."""
    a, b = load_gltf(TEXTURED), load_gltf(TEXTURED.with_suffix(".glb"))
    assert [m.name.replace(".glb:", ".gltf:") for m in b] == [m.name for m in a]
    for x, y in zip(a, b, strict=True):
        for k in ("positions", "normals", "uvs", "indices", "material_ids", "tangents"):
            assert np.array_equal(getattr(x, k), getattr(y, k)), (x.name, k)
        for mx, my in zip(x.materials, y.materials, strict=True):
            same = ("name", "kind", "base_color", "roughness", "emission")
            assert [getattr(mx, k) for k in same] == [getattr(my, k) for k in same]
            assert np.array_equal(mx.base_color_texture.pixels, my.base_color_texture.pixels)


def test_small_glb_with_transforms_and_material(tmp_path):
    g = Gltf()
    pos = g.accessor(TRI, "VEC3")
    uv = g.accessor(np.array([[0, 0], [255, 0], [0, 255]], np.uint8), "VEC2", normalized=True)
    pbr = {"baseColorFactor": [1, 0.8, 0.3, 1], "metallicFactor": 1.0, "roughnessFactor": 0.3}
    strength = {"KHR_materials_emissive_strength": {"emissiveStrength": 4}}
    g.doc["materials"] = [
        {
            "name": "gold",
            "pbrMetallicRoughness": pbr,
            "emissiveFactor": [1, 0.5, 0.25],
            "extensions": strength,
        }
    ]
    mesh = g.mesh([{"attributes": {"POSITION": pos, "TEXCOORD_0": uv}, "material": 0}], name="tri")
    child = g.node(root=False, mesh=mesh, scale=[2, 2, 2])
    g.node(children=[child], translation=[10, 0, 0], rotation=[0, 0, np.sin(np.pi / 4), np.cos(np.pi / 4)])
    (m,) = load_gltf(g.glb(tmp_path / "s.glb"))
    # scale 2, then 90 degrees about z, then +10 in x
    np.testing.assert_allclose(m.positions, [[10, 0, 0], [10, 2, 0], [8, 0, 0]], atol=1e-5)
    np.testing.assert_allclose(m.uvs, [[0, 0], [1, 0], [0, 1]])
    assert m.normals is None and m.name == "s.glb:tri"
    (mat,) = m.materials
    assert (mat.kind, mat.metallic) == ("gltf", 1.0) and mat.roughness == pytest.approx(0.3)
    assert mat.base_color == pytest.approx((1, 0.8, 0.3)) and mat.emission == pytest.approx((4, 2, 1))


def test_mirroring_matrix_flips_winding_and_normals(tmp_path):
    g = one_triangle(Gltf(), matrix=[-1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1])
    (m,) = load_gltf(g.glb(tmp_path / "mirror.glb"))
    np.testing.assert_allclose(m.positions[:, 0], [0, -1, 0])
    np.testing.assert_allclose(face_normal(m), [0, 0, 1], atol=1e-6)  # front side unchanged
    np.testing.assert_allclose(m.normals, np.tile([0, 0, 1], (3, 1)), atol=1e-6)
    g = one_triangle(Gltf(), scale=[1, 1, -1])  # mirror in z: the front now faces -z
    (m,) = load_gltf(g.glb(tmp_path / "mz.glb"))
    np.testing.assert_allclose(face_normal(m), [0, 0, -1], atol=1e-6)
    np.testing.assert_allclose(m.normals, np.tile([0, 0, -1], (3, 1)), atol=1e-6)


def test_strip_fan_and_non_indexed(tmp_path):
    quad = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], np.float32)
    g = Gltf()
    pos = g.accessor(quad, "VEC3")
    fan = g.accessor(np.array([0, 1, 3, 2], np.uint32), "SCALAR")
    g.node(mesh=g.mesh([{"attributes": {"POSITION": pos}, "mode": 5}], name="strip"))
    g.node(mesh=g.mesh([{"attributes": {"POSITION": pos}, "indices": fan, "mode": 6}], name="fan"))
    g.node(mesh=g.mesh([{"attributes": {"POSITION": pos}}], name="list3"))  # 4 vertices: not a multiple of 3
    with pytest.raises(SceneError, match="4 triangle indices is not a multiple of 3"):
        load_gltf(g.glb(tmp_path / "bad.glb"))
    g.doc["scenes"][0]["nodes"] = [0, 1]
    strip, fan_m = load_gltf(g.glb(tmp_path / "sf.glb"))
    assert strip.indices.tolist() == [[0, 1, 2], [1, 3, 2]]
    assert fan_m.indices.tolist() == [[1, 3, 0], [3, 2, 0]]
    for m in (strip, fan_m):
        for t in range(2):
            np.testing.assert_allclose(face_normal(m, t), [0, 0, 1], atol=1e-6)


def test_interleaved_stride_sparse_and_embedded_texture(tmp_path):
    g = Gltf()
    inter = np.zeros(3, [("p", "<f4", 3), ("n", "<f4", 3), ("uv", "<f4", 2)])
    inter["p"], inter["n"], inter["uv"] = TRI, [0, 0, 1], [[0, 0], [1, 0], [0, 1]]
    view = g.view(inter.tobytes(), stride=32)
    pos = g.accessor(TRI, "VEC3", view=view, offset=0)
    nrm = g.accessor(TRI, "VEC3", view=view, offset=12)
    uv1 = g.accessor(TRI[:, :2], "VEC2", view=view, offset=24)
    # sparse: replace vertex 2 by (0, 5, 0)
    sp_idx = g.view(np.array([2], np.uint16).tobytes())
    sp_val = g.view(np.array([[0, 5, 0]], np.float32).tobytes())
    g.doc["accessors"][pos]["sparse"] = {
        "count": 1,
        "indices": {"bufferView": sp_idx, "componentType": 5123},
        "values": {"bufferView": sp_val},
    }
    img = g.view(png_bytes())
    g.doc["images"] = [{"bufferView": img, "mimeType": "image/png"}]
    g.doc["textures"] = [{"source": 0}]
    g.doc["materials"] = [
        {"pbrMetallicRoughness": {"baseColorTexture": {"index": 0, "texCoord": 1}, "metallicFactor": 0}}
    ]
    g.node(mesh=g.mesh([{"attributes": {"POSITION": pos, "NORMAL": nrm, "TEXCOORD_1": uv1}, "material": 0}]))
    (m,) = load_gltf(g.glb(tmp_path / "i.glb"))
    np.testing.assert_allclose(m.positions, [[0, 0, 0], [1, 0, 0], [0, 5, 0]])
    np.testing.assert_allclose(m.normals, np.tile([0, 0, 1], (3, 1)))
    np.testing.assert_allclose(m.uvs, [[0, 0], [1, 0], [0, 1]])  # TEXCOORD_1, as the texture asks
    tex = m.materials[0].base_color_texture
    assert (m.materials[0].kind, m.materials[0].metallic) == ("gltf", 0) and tex.pixels.shape == (2, 2, 3)
    assert tex.pixels[0, 0].tolist() == [10, 200, 30]  # alpha dropped


def test_gltf_external_bin_data_uri_and_texture_transform(tmp_path):
    g = one_triangle(Gltf())
    uv = g.accessor(np.float32([[0, 0], [1, 0], [0, 1]]), "VEC2")
    g.doc["meshes"][0]["primitives"][0]["attributes"]["TEXCOORD_0"] = uv
    g.doc["meshes"][0]["primitives"][0]["material"] = 0
    Image.new("RGB", (3, 1), (1, 2, 3)).save(tmp_path / "t.png")
    g.doc["images"] = [{"uri": "t.png"}]
    g.doc["textures"] = [{"source": 0}]
    tt = {"KHR_texture_transform": {"offset": [0.5, 0], "scale": [2, 2]}}
    g.doc["materials"] = [{"pbrMetallicRoughness": {"baseColorTexture": {"index": 0, "extensions": tt}}}]
    g.doc["extensionsUsed"] = g.doc["extensionsRequired"] = ["KHR_texture_transform"]
    for embed in (False, True):
        (m,) = load_gltf(g.gltf(tmp_path / f"e{embed}.gltf", embed=embed))
        np.testing.assert_allclose(m.uvs, [[0, 0], [1, 0], [0, 1]])  # the slot transforms them
        assert m.materials[0].samplers["base_color"].transform == (2, 0, 0.5, 0, 2, 0)
        assert m.materials[0].base_color_texture.pixels.shape == (1, 3, 3)


def test_missing_buffer_and_image_reported_together(tmp_path):
    g = one_triangle(Gltf())
    g.doc["meshes"][0]["primitives"][0]["material"] = 0
    g.doc["images"] = [{"uri": "gone%20away.png"}]
    g.doc["textures"] = [{"source": 0}]
    g.doc["materials"] = [{"pbrMetallicRoughness": {"baseColorTexture": {"index": 0}}}]
    p = g.gltf(tmp_path / "m.gltf")
    (tmp_path / "m.bin").unlink()
    with pytest.raises(MissingAssetsError) as e:
        load_gltf(p)
    assert sorted(Path(x).name for x in e.value.missing) == ["gone away.png", "m.bin"]
    assert "m.gltf" in str(e.value)


@pytest.mark.parametrize(
    "edit, problem",
    [
        (
            lambda g: g.doc.update(extensionsRequired=["KHR_draco_mesh_compression"]),
            "KHR_draco_mesh_compression",
        ),
        (lambda g: g.doc.update(extensionsRequired=["EXT_meshopt_compression"]), "EXT_meshopt_compression"),
        (lambda g: g.doc["meshes"][0]["primitives"][0].update(mode=1), "primitive mode LINES"),
        (lambda g: g.doc["meshes"][0]["primitives"][0].update(mode=0), "primitive mode POINTS"),
        (lambda g: g.doc["accessors"][0].update(count=1000), "past the end of bufferView"),
        (lambda g: g.doc["bufferViews"][0].update(byteLength=10**6), "out of range of buffer"),
        (lambda g: g.doc["accessors"][2].update(componentType=5126), "component type 5126 is not allowed"),
        (lambda g: g.doc["nodes"][0].update(children=[0]), "appears twice"),
        (lambda g: g.doc["accessors"][0].update(count="three"), "accessors[0].count"),
        (lambda g: g.doc.update(asset={"version": "1.0"}), "version 1.0"),
    ],
)
def test_refusals_name_file_and_feature(tmp_path, edit, problem):
    g = one_triangle(Gltf())
    edit(g)
    with pytest.raises(SceneError) as e:
        load_gltf(g.glb(tmp_path / "x.glb"))
    assert "x.glb" in str(e.value) and problem in str(e.value), str(e.value)


def test_index_out_of_range_and_truncated_glb(tmp_path):
    g = one_triangle(Gltf())
    g.bin[72:74] = np.uint16(9).tobytes()  # the first index (after 36 + 36 bytes of POSITION and NORMAL)
    with pytest.raises(SceneError, match="index 9 is out of range"):
        load_gltf(g.glb(tmp_path / "r.glb"))
    p = one_triangle(Gltf()).glb(tmp_path / "t.glb")
    p.write_bytes(p.read_bytes()[:-20])
    with pytest.raises(SceneError) as e:
        load_gltf(p)
    assert "t.glb" in str(e.value) and "truncated GLB" in str(e.value)


def test_ignored_features_are_warned(tmp_path):
    g = one_triangle(Gltf())
    g.doc["skins"] = [{"joints": [0]}]
    g.doc["animations"] = [{"channels": [], "samplers": []}]
    g.doc["extensionsUsed"] = ["KHR_lights_punctual"]
    g.doc["meshes"][0]["primitives"][0]["targets"] = [{"POSITION": 0}]
    warnings = []
    load_gltf(g.glb(tmp_path / "w.glb"), warnings=warnings)
    text = "\n".join(warnings)
    for what in ("skins", "animations", "KHR_lights_punctual", "morph targets", "default"):
        assert what in text, text


def test_instances_hidden_nodes_and_load_scene(tmp_path):
    g = one_triangle(Gltf(), translation=[0, 0, 1])
    g.node(mesh=0, translation=[0, 0, -1])  # a second instance of the same mesh
    g.node(mesh=0, scale=[0, 0, 0])  # zero scale hides a node in glTF
    warnings = []
    a, b = load_gltf(g.glb(tmp_path / "inst.glb"), warnings=warnings)
    assert a.positions[:, 2].tolist() == [1, 1, 1] and b.positions[:, 2].tolist() == [-1, -1, -1]
    assert any("zero scale" in w for w in warnings)
    s = load_scene(tmp_path / "inst.glb")
    assert len(s.meshes) == 2 and s.camera.look_at == pytest.approx((0.5, 0.5, 0.0))
    assert s.source == str(tmp_path / "inst.glb") and s.environment.color == (1, 1, 1)


# ------------------------------------------------------------------------------- glTF materials
# The committed asset tests/data/gltf_materials (tests/gltf_materials.py made it): loaded, then
# rendered on the CPU, each feature in a scene of its own.

MATERIALS_GLTF = gltf_materials.DATA / "materials.gltf"
SRGB_128 = ((128 / 255 + 0.055) / 1.055) ** 2.4  # the orange texel's green, decoded from sRGB


def materials_meshes() -> dict:
    return {m.name.split(":")[1]: m for m in load_gltf(MATERIALS_GLTF)}


def quad_mesh(name, x0, x1, y0, y1, z, mat, facing=1.0) -> MeshData:
    p = np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], np.float32)
    idx = np.array([[0, 1, 2], [0, 2, 3]] if facing > 0 else [[0, 2, 1], [0, 3, 2]], np.int32)
    return MeshData(name, p, idx, np.zeros(2, np.int32), [mat])


def lamp(radiance=1.0) -> MaterialDesc:
    return MaterialDesc("lamp", base_color=(0, 0, 0), emission=(radiance,) * 3)


def render_quads(renderer_for, meshes, *, width, height=32, look=(0.5, 0.5), span=1.0, z=10.0,
                 spp=16, depth=2, lights=(), cam=None):  # fmt: skip
    """Mean radiance per pixel of `meshes` seen straight down -z over `span` in x."""
    cam = cam or CameraDesc(position=(look[0], look[1], z), look_at=(look[0], look[1], 0.0),
                            fov_deg=float(np.degrees(2 * np.arctan(span / 2 / z))), fov_axis="x")  # fmt: skip
    settings = RenderSettings(width=width, height=height, spp=spp, pass_spp=spp, max_depth=depth,
                              rr_depth=depth)  # fmt: skip
    scene = LoadedScene("gltf-test", list(meshes), cam, EnvironmentDesc(), settings, lights=list(lights))
    compiled = compile_scene(scene)
    return render_frame(renderer_for(compiled), settings).image().astype(np.float64)


def test_materials_asset_is_what_the_script_writes(tmp_path):
    out = gltf_materials.write_materials(tmp_path)
    for p in sorted(out.parent.iterdir()):
        assert p.read_bytes() == (gltf_materials.DATA / p.name).read_bytes(), p.name


def test_materials_load_every_slot_with_its_sampler_and_colour_space():
    warnings = []
    meshes = {m.name.split(":")[1]: m for m in load_gltf(MATERIALS_GLTF, warnings=warnings)}
    assert warnings == []  # every extension the asset uses is applied
    mats = {k: m.materials[0] for k, m in meshes.items()}
    assert {k: v.samplers["emission"].wrap_s for k, v in mats.items() if k.startswith("Wrap")} == {
        "WrapRepeat": "repeat", "WrapClamp": "clamp", "WrapMirror": "mirror"}  # fmt: skip
    assert mats["Offset"].samplers["emission"].transform == (1, 0, 0.5, 0, 1, 0)
    assert mats["NormalMap"].normal_scale == 1.0 and mats["NormalFlat"].normal_scale == 0.0
    np.testing.assert_allclose(meshes["NormalMap"].tangents, np.tile([1, 0, 0, 1], (4, 1)), atol=1e-6)
    assert (mats["Mask"].alpha_mode, mats["Mask"].alpha_cutoff) == ("mask", 0.5)
    assert mats["Mask"].alpha_texture.pixels[0, :, 0].tolist() == [0, 255]  # the PNG's own alpha
    blend = mats["Blend"]
    assert (blend.alpha_mode, blend.alpha, blend.alpha_texture) == ("blend", 0.25, None)
    glass, solid = mats["Glass"], mats["GlassVolume"]
    assert (glass.kind, glass.ior, glass.thin) == ("dielectric", 1.5, True)  # thin-walled without a volume
    assert (solid.kind, solid.thin) == ("dielectric", False)
    assert mats["Emissive"].emission == (4, 4, 4) and mats["MetalRough"].kind == "gltf"
    # compiled: one image stored once for every slot reading it; colour slots sRGB, data linear
    scene = LoadedScene("t", list(meshes.values()), CameraDesc(), EnvironmentDesc())
    c = compile_scene(scene)
    rows = {name: c.materials[i] for i, name in enumerate(c.material_names)}
    refs = c.tex_refs
    slots = [("WrapClamp", MAT_EMIT_TEX), ("NormalMap", MAT_NORMAL_TEX), ("MetalRough", MAT_MR_TEX),
             ("Mask", MAT_BASE_TEX), ("Mask", MAT_ALPHA_TEX)]  # fmt: skip
    assert [refs[int(rows[name][col]), TEXREF_SRGB] for name, col in slots] == [1, 0, 0, 1, 0]
    assert len(c.tex_info) == 5 and c.tangents.shape == (len(c.positions), 4)


def test_required_extension_error_and_used_only_warning(tmp_path):
    g = one_triangle(Gltf())
    g.doc["extensionsUsed"] = ["KHR_materials_sheen", "KHR_materials_transmission"]
    g.doc["extensionsRequired"] = ["KHR_materials_transmission"]  # supported: no error
    warnings = []
    load_gltf(g.glb(tmp_path / "u.glb"), warnings=warnings)
    assert any("KHR_materials_sheen" in w for w in warnings)
    assert not any("KHR_materials_transmission" in w for w in warnings)
    g.doc["extensionsRequired"] = ["KHR_materials_transmission", "KHR_materials_sheen"]
    with pytest.raises(SceneError, match="requires unsupported glTF extension.*KHR_materials_sheen") as e:
        load_gltf(g.glb(tmp_path / "r.glb"))
    assert "KHR_materials_transmission" not in str(e.value)


def test_file_tangents_follow_a_mirroring_node(tmp_path):
    g = Gltf()
    pos = g.accessor(TRI, "VEC3")
    nrm = g.accessor(np.tile(np.float32([0, 0, 1]), (3, 1)), "VEC3")
    uv = g.accessor(np.float32([[0, 1], [1, 1], [0, 0]]), "VEC2")
    tan = g.accessor(np.tile(np.float32([1, 0, 0, -1]), (3, 1)), "VEC4")
    img = g.view(png_bytes((128, 128, 255, 255)))
    g.doc["images"] = [{"bufferView": img, "mimeType": "image/png"}]
    g.doc["textures"] = [{"source": 0}]
    g.doc["materials"] = [{"normalTexture": {"index": 0, "scale": 0.5}}]
    attrs = {"POSITION": pos, "NORMAL": nrm, "TEXCOORD_0": uv, "TANGENT": tan}
    g.node(mesh=g.mesh([{"attributes": attrs, "material": 0}]))
    g.node(mesh=0, scale=[-1, 1, 1])
    plain, mirrored = load_gltf(g.glb(tmp_path / "t.glb"))
    np.testing.assert_allclose(plain.tangents, np.tile([1, 0, 0, -1], (3, 1)))
    # mirrored in x: the tangent turns with the surface and w flips (the bitangent keeps its side)
    np.testing.assert_allclose(mirrored.tangents, np.tile([-1, 0, 0, 1], (3, 1)))
    del attrs["TANGENT"]  # generated: dP/du is +x, image-up (-v) is +y = N x T, so w = +1
    (made, _) = load_gltf(g.glb(tmp_path / "m.glb"))
    np.testing.assert_allclose(made.tangents, np.tile([1, 0, 0, 1], (3, 1)), atol=1e-6)


def bilinear_2x1(u: np.ndarray, wrap: str) -> np.ndarray:
    """Expected weight of the right texel of a 2 x 1 image at u (texel centres at u 0.25, 0.75)."""
    x = u * 2 - 0.5
    x0 = np.floor(x)
    f = x - x0

    def idx(i):
        if wrap == "repeat":
            return np.mod(i, 2)
        if wrap == "clamp":
            return np.clip(i, 0, 1)
        k = np.mod(i, 4)
        return np.where(k < 2, k, 3 - k)

    return idx(x0) * (1 - f) + idx(x0 + 1) * f


WRAP_CASES = [("WrapRepeat", "repeat"), ("WrapClamp", "clamp"), ("WrapMirror", "mirror")]


@pytest.mark.parametrize("name, wrap", WRAP_CASES)
def test_wrap_modes_bilinear_and_srgb_emission(renderer_for, name, wrap):
    """An emissive 2 x 1 texture over u in [0, 2], seen directly: each wrap mode's pattern,
    filtered bilinearly, the orange texel's green decoded from sRGB (0.216, not 0.502)."""
    img = render_quads(renderer_for, [materials_meshes()[name]], width=64, height=16, look=(1.0, 0.5),
                       span=2.0, spp=8, depth=1)  # fmt: skip
    row = img[4:12].mean(axis=0)  # (64, 3) along u
    u = 2 * (np.arange(64) + 0.5) / 64
    want = bilinear_2x1(u, wrap)
    np.testing.assert_allclose(row[:, 0], want, atol=0.06)
    np.testing.assert_allclose(row[:, 1], want * SRGB_128, atol=0.02)
    assert np.abs(row[:, 2]).max() < 1e-6


def test_texture_transform_offsets_the_slot(renderer_for):
    img = render_quads(renderer_for, [materials_meshes()["Offset"]], width=32, spp=8, depth=1)
    row = img[8:24].mean(axis=0)[:, 0]
    u = (np.arange(32) + 0.5) / 32
    np.testing.assert_allclose(row, bilinear_2x1(u + 0.5, "repeat"), atol=0.06)


def sun(deg: float, axis: int) -> LightDesc:
    """A sun tilted `deg` from +z towards +x (axis 0) or +y (axis 1), shining down on the quads."""
    d = [0.0, 0.0, -math.cos(math.radians(deg))]
    d[axis] = -math.sin(math.radians(deg))
    return LightDesc("directional", direction=tuple(d), intensity=(3.0, 3.0, 3.0))


def halves(img: np.ndarray) -> tuple[float, float]:
    """Mean luminance of the left and right quarter of the image (away from the blend)."""
    w = img.shape[1]
    lum = img @ np.array([0.2126, 0.7152, 0.0722])
    return float(lum[:, : w // 4].mean()), float(lum[:, -w // 4 :].mean())


def test_normal_map_tilts_shading_along_tangent_and_bitangent(renderer_for):
    """Left texels lean towards +u (+x), right ones towards image-up (+y): a sun from +x lights
    the left brighter, a sun from +y the right; with scale 0 both halves shade alike."""
    meshes = materials_meshes()
    left, right = halves(render_quads(renderer_for, [meshes["NormalMap"]], width=32, lights=[sun(50, 0)]))
    assert left > 1.5 * right, (left, right)  # cos: 0.97 against 0.51
    left, right = halves(render_quads(renderer_for, [meshes["NormalMap"]], width=32, lights=[sun(50, 1)]))
    assert right > 1.5 * left, (left, right)
    left, right = halves(render_quads(renderer_for, [meshes["NormalFlat"]], width=32, lights=[sun(50, 0)]))
    assert left == pytest.approx(right, rel=0.02) and left > 0


def test_metallic_roughness_is_read_per_texel(renderer_for):
    """Left texels: a glossy metal (no highlight towards the camera), right: rough dielectric.
    The texture's mean would shade both halves alike."""
    left, right = halves(render_quads(renderer_for, [materials_meshes()["MetalRough"]], width=32,
                                      lights=[sun(50, 0)]))  # fmt: skip
    assert right > 0.1 and left < 0.05 * right, (left, right)


# the floor (z = -1) under x in [-1, 0], where the quads' shadow falls in a sun from +x at 45 degrees
FLOOR_CAM = CameraDesc(position=(-0.5, 0.5, 4.0), look_at=(-0.5, 0.5, -1.0), fov_axis="x",
                       fov_deg=float(np.degrees(2 * np.arctan(0.5 / 5.0))))  # fmt: skip


def test_mask_cuts_out_in_camera_and_shadow_rays(renderer_for):
    """MASK's alpha-0 half shows the lamp behind it and lets the sun through to a floor."""
    mask = materials_meshes()["Mask"]
    img = render_quads(renderer_for, [mask, quad_mesh("lamp", -2, 3, -2, 3, -1.0, lamp())], width=32, depth=1)
    left, right = halves(img)
    assert left == pytest.approx(1.0, abs=1e-5) and right == 0.0
    # the sun from +x at 45 degrees: the quad (z = 0) shadows floor x in [-1, 0] (z = -1)
    floor = quad_mesh("floor", -3, 3, -3, 3, -1.0, MaterialDesc("floor", base_color=(0.5, 0.5, 0.5)))
    shadow = render_quads(renderer_for, [mask, floor], width=32, cam=FLOOR_CAM, lights=[sun(45, 0)])
    lit, dark = halves(shadow)  # the cut-out half casts no shadow, the solid half does
    want = 0.5 / math.pi * 3.0 * math.cos(math.radians(45))
    assert lit == pytest.approx(want, rel=0.01) and dark < 1e-6, (lit, dark, want)


def test_blend_is_stochastic_and_deterministic(renderer_for):
    """BLEND with alpha 0.25: 3 in 4 camera rays and shadow rays go through, the same ones on
    every render (a hash of the sample decides)."""
    blend = materials_meshes()["Blend"]
    meshes = [blend, quad_mesh("lamp", -2, 3, -2, 3, -1.0, lamp())]
    a = render_quads(renderer_for, meshes, width=32, spp=64, depth=1)
    b = render_quads(renderer_for, meshes, width=32, spp=64, depth=1)
    assert np.array_equal(a, b)
    assert a.mean() == pytest.approx(0.75, abs=0.01)
    floor = quad_mesh("floor", -3, 3, -3, 3, -1.0, MaterialDesc("floor", base_color=(0.5, 0.5, 0.5)))
    shadow = render_quads(renderer_for, [blend, floor], width=32, spp=64, cam=FLOOR_CAM, lights=[sun(45, 0)])
    want = 0.5 / math.pi * 3.0 * math.cos(math.radians(45))
    assert float(shadow.mean(axis=2).mean()) == pytest.approx(0.75 * want, rel=0.03)


def test_emissive_texture_lights_the_floor_per_texel(renderer_for):
    """The orange-and-black emissive quad, facing down onto a floor, lights it as the same
    emission cut into 48 untextured strips does (NEE picks by the texture's mean power, then
    takes the texel's radiance; BSDF hits see the texel too): unbiased, brighter under orange."""
    lamp_mesh = materials_meshes()["Emissive"]
    down = lamp_mesh.positions * [1, -1, -1] + [0, 1, 1]  # turned over: at z = 1 facing -z
    textured = MeshData("lamp", down.astype(np.float32), lamp_mesh.indices, lamp_mesh.material_ids,
                        lamp_mesh.materials, uvs=lamp_mesh.uvs)  # fmt: skip
    strips = []
    n = 48
    for k in range(n):
        u = (k + 0.5) / n
        c = bilinear_2x1(np.array([u]), "clamp")[0] * np.array([1.0, SRGB_128, 0.0]) * 4.0
        m = MaterialDesc(f"strip{k}", base_color=(0, 0, 0), emission=tuple(c))
        strips.append(quad_mesh(f"s{k}", k / n, (k + 1) / n, 0, 1, 1.0, m, facing=-1.0))
    floor = quad_mesh("floor", -2, 3, -2, 3, 0.0, MaterialDesc("floor", base_color=(0.8, 0.8, 0.8)))
    cam = CameraDesc(position=(0.5, 0.5, 0.9), look_at=(0.5, 0.5, 0.0), fov_deg=90.0)
    a = render_quads(renderer_for, [textured, floor], width=32, spp=64, cam=cam)
    b = render_quads(renderer_for, [*strips, floor], width=32, spp=64, cam=cam)
    la, ra = halves(a)
    lb, rb = halves(b)
    assert ra > 1.5 * la  # brighter under the orange half
    assert la == pytest.approx(lb, rel=0.04) and ra == pytest.approx(rb, rel=0.04), (la, lb, ra, rb)


def test_masked_emitter_emits_only_where_it_is(renderer_for):
    """A MASK quad given an emission lights a floor as a lamp over its solid half alone would:
    light samples on its cut-out half count for nothing, as BSDF rays pass through there."""
    mask = materials_meshes()["Mask"]
    mat = dataclasses.replace(mask.materials[0], emission=(2.0, 2.0, 2.0))
    down = (mask.positions * [1, -1, -1] + [0, 1, 1]).astype(np.float32)  # at z = 1 facing -z
    cut = MeshData("cut", down, mask.indices, mask.material_ids, [mat], uvs=mask.uvs)
    solid = quad_mesh("solid", 0.5, 1.0, 0, 1, 1.0, lamp(2.0), facing=-1.0)
    floor = quad_mesh("floor", -2, 3, -2, 3, 0.0, MaterialDesc("floor", base_color=(0.8, 0.8, 0.8)))
    cam = CameraDesc(position=(0.5, 0.5, 0.9), look_at=(0.5, 0.5, 0.0), fov_deg=90.0)
    la, ra = halves(render_quads(renderer_for, [cut, floor], width=32, spp=64, cam=cam))
    lb, rb = halves(render_quads(renderer_for, [solid, floor], width=32, spp=64, cam=cam))
    assert la == pytest.approx(lb, rel=0.04) and ra == pytest.approx(rb, rel=0.04), (la, lb, ra, rb)


@pytest.mark.slow
def test_used_only_extension_is_a_warning_in_the_render_record(tmp_path):
    """`meshrender render x.glb --json`: an extension listed only in extensionsUsed, which we do
    not apply, renders and is named in the record's warnings."""
    g = one_triangle(Gltf())
    g.doc["extensionsUsed"] = ["KHR_materials_sheen"]
    path = g.glb(tmp_path / "sheen.glb")
    p = subprocess.run(
        [sys.executable, "-m", "meshrender", "render", str(path), "--res", "8x8", "--spp", "1",
         "--backend", "cpu", "--json", "-o", str(tmp_path / "s.png")],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    record = json.loads(p.stdout.strip().splitlines()[-1])
    assert any("KHR_materials_sheen" in w for w in record["warnings"]), record["warnings"]
