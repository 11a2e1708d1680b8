"""glTF loader: GLB/.gltf containers, the node graph, accessors, primitive modes, materials and
textures, and refusals of what we cannot render (each naming the file and the feature)."""

from __future__ import annotations

import base64
import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import textured
from conftest import TEXTURED
from PIL import Image

from meshrender.errors import MissingAssetsError, SceneError
from meshrender.scene.gltf import load_gltf
from meshrender.scene.load import load_scene

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
    transform as written, and the features we only reduce or ignore warned."""
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
    assert mats["MetalMat"].kind == "conductor" and mats["MetalMat"].roughness == pytest.approx(77 / 255)
    assert mats["LeatherMat"].kind == "diffuse" and mats["LeatherMat"].roughness == pytest.approx(204 / 255)
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
    text = "\n".join(warnings)
    for what in ("normalTexture", "occlusionTexture", "alphaMode BLEND", "metallicRoughnessTexture"):
        assert what in text, text


def test_textured_glb_is_the_same_asset():
    """The .glb (buffer and images inside) loads to exactly what the .gltf and its files give."""
    a, b = load_gltf(TEXTURED), load_gltf(TEXTURED.with_suffix(".glb"))
    assert [m.name.replace(".glb:", ".gltf:") for m in b] == [m.name for m in a]
    for x, y in zip(a, b, strict=True):
        for k in ("positions", "normals", "uvs", "indices", "material_ids"):
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
    assert mat.kind == "conductor" and mat.roughness == pytest.approx(0.3)
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
    assert m.materials[0].kind == "diffuse" and tex.pixels.shape == (2, 2, 3)
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
        np.testing.assert_allclose(m.uvs, [[0.5, 0], [2.5, 0], [0.5, 2]])
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
