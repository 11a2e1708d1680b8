"""load_scene: built-ins, bare meshes, the TOML scene file, missing assets and validation."""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import OpenEXR
import pytest
from conftest import BUNNY, CORNELL_DIR, TEXTURED, write
from PIL import Image

from meshrender.errors import MissingAssetsError, SceneError
from meshrender.scene.load import list_builtins, load_scene
from meshrender.settings import RenderSettings

CORNELL = CORNELL_DIR

TRI_OBJ = "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n"


def scene(tmp_path, toml, files=None):
    for name, text in (files or {"tri.obj": TRI_OBJ}).items():
        write(tmp_path, name, text)
    return write(tmp_path, "scene.toml", toml)


def area(mesh, mask=None):
    p = mesh.positions.astype(np.float64)[mesh.indices if mask is None else mesh.indices[mask]]
    return 0.5 * np.linalg.norm(np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), axis=1).sum()


# ---------------------------------------------------------------------------------- built-in


def _rgb(s: str):
    return tuple(float(v) for v in s.split(","))


@pytest.mark.parametrize("spec", ["cornell", "builtin:cornell"])
def test_cornell_builtin_matches_mitsuba(spec):
    s = load_scene(spec)
    assert "cornell" in list_builtins() and s.source == "builtin:cornell"
    (m,) = s.meshes
    assert len(m.indices) == 36 and m.normals is None and m.uvs is None
    mats = {x.name: x for x in m.materials}
    assert set(mats) == {"white", "red", "green", "light"}
    xml = ET.parse(CORNELL / "cornell_box_boxfilter.xml").getroot()
    bsdfs = {b.get("id"): _rgb(b.find("rgb").get("value")) for b in xml.iter("bsdf")}
    for name in ("white", "red", "green"):
        assert mats[name].base_color == bsdfs[name] and mats[name].emission == (0, 0, 0)
        assert mats[name].kind == "diffuse"
    light_shape = next(sh for sh in xml.iter("shape") if sh.get("id") == "light")
    assert (
        mats["light"].emission
        == _rgb(light_shape.find("emitter/rgb").get("value"))
        == (18.387, 13.9873, 6.75357)
    )
    assert mats["light"].base_color == bsdfs["white"] and not mats["light"].two_sided_emission
    lit = m.material_ids == m.materials.index(mats["light"])
    assert lit.sum() == 2 and area(m, lit) == pytest.approx(0.46 * 0.38, rel=1e-6)
    p = m.positions.astype(np.float64)[m.indices[lit]]
    n = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    assert np.all(n[:, 1] < 0)  # one-sided, facing down into the box
    sensor = xml.find("sensor")
    look = sensor.find("transform/lookat")
    cam = s.camera
    assert cam.position == _rgb(look.get("origin")) == (0, 0, 3.9)
    assert cam.look_at == _rgb(look.get("target")) and cam.up == _rgb(look.get("up"))
    assert cam.fov_deg == float(sensor.find("float[@name='fov']").get("value")) == 39.3077
    assert cam.fov_axis == sensor.find("string[@name='fov_axis']").get("value") == "smaller"
    assert cam.aperture_radius == 0
    defaults = {d.get("name"): int(d.get("value")) for d in xml.iter("default")}
    st = s.settings
    mitsuba = (defaults["res"], defaults["res"], defaults["spp"], defaults["max_depth"])
    assert (st.width, st.height, st.spp, st.max_depth) == mitsuba == (256, 256, 64, 8)
    assert s.environment.color == (0, 0, 0) and s.environment.image is None and s.warnings == []


def test_unknown_builtin():
    with pytest.raises(SceneError, match="no built-in scene 'nosuch'.*cornell"):
        load_scene("builtin:nosuch")


# ----------------------------------------------------------------------- assets in tests/data


def test_obj_ply_gltf_assets():
    s = load_scene(CORNELL / "cornell_box.obj")
    assert sum(len(m.indices) for m in s.meshes) == 36
    s = load_scene(BUNNY)
    (m,) = s.meshes
    assert len(m.indices) == 69451 and np.isfinite(m.positions).all()
    s = load_scene(TEXTURED)
    assert len(s.meshes) == 7 and sum(len(m.indices) for m in s.meshes) == 1956
    assert all(m.materials[0].base_color_texture is not None for m in s.meshes)
    assert all(np.isfinite(m.positions).all() and np.isfinite(m.normals).all() for m in s.meshes)
    assert any("occlusionTexture" in w for w in s.warnings)  # the one slot a path tracer ignores


def test_bare_mesh_is_framed(tmp_path):
    s = load_scene(BUNNY)
    m = s.meshes[0]
    cam = s.camera
    assert cam.fov_deg == 40 and cam.fov_axis == "smaller" and s.environment.image.name == "default sky"
    eye, target = np.array(cam.position), np.array(cam.look_at)
    fwd = (target - eye) / np.linalg.norm(target - eye)
    assert fwd[2] < 0 and fwd[1] < 0  # looking from the front, from above
    v = m.positions.astype(np.float64) - eye
    angle = np.degrees(np.arccos(np.clip((v @ fwd) / np.linalg.norm(v, axis=1), -1, 1)))
    assert angle.max() < 20  # every vertex inside the 40-degree cone
    assert angle.max() > 10  # and the mesh fills a good part of it


# ------------------------------------------------------------------------------ scene file


def test_scene_file_materials_transforms_lights_environment(tmp_path, caplog):
    Image.new("RGB", (2, 2), (255, 255, 255)).save(tmp_path / "tex.png")
    sky = np.full((2, 4), 0.5, np.float32)
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    OpenEXR.File(header, {"R": sky, "G": sky, "B": sky}).write(str(tmp_path / "sky.exr"))
    toml = """
[render]
resolution = [320, 200]
spp = 8
[camera]
position = [0, 0, 5]
fov_deg = 30
[environment]
image = "sky.exr"
rotation_deg = 90
[materials.paint]
base_color = [0.1, 0.2, 0.3]
base_color_texture = "tex.png"
[materials.metal]
type = "conductor"
roughness = 0.2
[[meshes]]
file = "tri.obj"
name = "moved"
material = "paint"
translate = [1, 2, 3]
rotate_deg = [0, 0, 90]
scale = [2, 1, 1]
[[meshes]]
file = "tri.obj"
material = "metal"
matrix = [-1, 0, 0, 0,  0, 1, 0, 0,  0, 0, 1, 0,  0, 0, 0, 1]
[[lights]]
file = "tri.obj"
name = "lamp"
radiance = [5, 4, 3]
two_sided = true
"""
    with caplog.at_level(logging.WARNING, logger="meshrender.scene"):
        s = load_scene(scene(tmp_path, toml))
    assert (s.settings.width, s.settings.height, s.settings.spp) == (320, 200, 8)
    assert s.camera.fov_deg == 30 and s.camera.position == (0, 0, 5)
    assert s.environment.color == (1, 1, 1) and s.environment.rotation_deg == 90
    assert s.environment.image.pixels.dtype == np.float32 and s.environment.image.pixels.shape == (2, 4, 3)
    moved, mirrored, lamp = s.meshes
    assert moved.name == "moved" and mirrored.name == "tri.obj" and lamp.name == "lamp"
    # scale x2 in x, then 90 degrees about z, then translate
    np.testing.assert_allclose(moved.positions, [[1, 2, 3], [1, 4, 3], [0, 2, 3]], atol=1e-6)
    (paint,) = moved.materials
    assert paint.base_color == (0.1, 0.2, 0.3) and paint.base_color_texture.pixels.shape == (2, 2, 3)
    assert mirrored.materials[0].kind == "conductor" and mirrored.materials[0].roughness == 0.2
    p = mirrored.positions[mirrored.indices[0]].astype(np.float64)
    assert np.cross(p[1] - p[0], p[2] - p[0])[2] > 0  # mirrored in x, the winding keeps the front at +z
    (light,) = lamp.materials
    assert light.emission == (5, 4, 3) and light.two_sided_emission and light.base_color == (0, 0, 0)
    assert s.warnings == [] and caplog.records == []


def test_environment_png_is_linearised_and_color_multiplies(tmp_path):
    Image.new("RGB", (2, 1), (255, 128, 0)).save(tmp_path / "sky.png")
    s = load_scene(
        scene(tmp_path, '[environment]\nimage = "sky.png"\ncolor = [2, 2, 2]\n[[meshes]]\nfile = "tri.obj"\n')
    )
    px = s.environment.image.pixels
    assert px.dtype == np.float32 and px[0, 0].tolist() == pytest.approx([1.0, 0.2158605, 0.0], abs=1e-6)
    assert s.environment.color == (2, 2, 2)


def test_three_missing_assets_in_one_error(tmp_path):
    toml = """
[environment]
image = "gone_sky.exr"
[materials.a]
base_color_texture = "gone_tex.png"
[[meshes]]
file = "tri.obj"
[[meshes]]
file = "gone_mesh.obj"
"""
    with pytest.raises(MissingAssetsError) as e:
        load_scene(scene(tmp_path, toml))
    names = sorted(Path(m).name for m in e.value.missing)
    assert names == ["gone_mesh.obj", "gone_sky.exr", "gone_tex.png"]
    assert "scene.toml" in str(e.value) and "3 missing asset(s)" in str(e.value)


def test_missing_assets_inside_mesh_files_are_listed_too(tmp_path):
    files = {
        "a.obj": "mtllib a.mtl gone.mtl\nusemtl t\n" + TRI_OBJ,
        "a.mtl": "newmtl t\nmap_Kd sub/gone.png\n",
        "b.gltf": '{"asset": {"version": "2.0"}, "buffers": [{"uri": "gone.bin", "byteLength": 4}]}',
    }
    toml = '[[meshes]]\nfile = "a.obj"\n[[meshes]]\nfile = "b.gltf"\n'
    with pytest.raises(MissingAssetsError) as e:
        load_scene(scene(tmp_path, toml, files))
    assert sorted(Path(m).name for m in e.value.missing) == ["gone.bin", "gone.mtl", "gone.png"]


@pytest.mark.parametrize(
    "toml, problem",
    [
        ('[render]\nspq = 4\n[[meshes]]\nfile = "tri.obj"\n', "render: unknown key `spq`"),
        ('[[meshes]]\nfile = "tri.obj"\nrotate = [0, 90, 0]\n', "meshes[0]: unknown key `rotate`"),
        (
            '[materials.w]\nbase_colour = [1, 1, 1]\n[[meshes]]\nfile = "tri.obj"\n',
            "materials.w: unknown key `base_colour`",
        ),
        ('[camra]\nfov_deg = 40\n[[meshes]]\nfile = "tri.obj"\n', "unknown key `camra`"),
        (
            '[[meshes]]\nfile = "tri.obj"\nmaterial = "whte"\n[materials.white]\n',
            "material 'whte' is not defined",
        ),
        ('[[lights]]\nfile = "tri.obj"\n', "lights[0]: missing required key `radiance`"),
        ('[render]\nspp = 0\n[[meshes]]\nfile = "tri.obj"\n', "render.spp"),
        ('[render]\nresolution = [64]\n[[meshes]]\nfile = "tri.obj"\n', "render.resolution"),
        ('[render]\nresolution = [64, 64]\nwidth = 3\n[[meshes]]\nfile = "tri.obj"\n', "not both"),
        ('[camera]\nfov_deg = 180\n[[meshes]]\nfile = "tri.obj"\n', "camera.fov_deg"),
        ('[camera]\nfov_deg = 0\n[[meshes]]\nfile = "tri.obj"\n', "camera.fov_deg"),
        ('[camera]\nposition = [1, 2, 3]\nlook_at = [1, 2, 3]\n[[meshes]]\nfile = "tri.obj"\n', "same point"),
        (
            '[camera]\nposition = [0, 5, 0]\nup = [0, 2, 0]\n[[meshes]]\nfile = "tri.obj"\n',
            "parallel to the view",
        ),
        ('[environment]\ncolor = [1, -1, 1]\n[[meshes]]\nfile = "tri.obj"\n', "environment.color[1]"),
        (
            '[environment]\ncolor = [1, nan, 1]\n[[meshes]]\nfile = "tri.obj"\n',
            "environment.color[1]: nan is not a finite number",
        ),
        ('[[lights]]\nfile = "tri.obj"\nradiance = [1, -2, 1]\n', "lights[0].radiance[1]"),
        ('[[lights]]\nfile = "tri.obj"\nradiance = [1, inf, 1]\n', "not a finite number"),
        ('[[meshes]]\nfile = "tri.obj"\nscale = 0.0\n', "singular"),
        ('[[meshes]]\nfile = "tri.obj"\nmatrix = [1,0,0,0, 0,1,0,0, 0,0,1,0, 0,0,1,1]\n', "affine"),
        (
            '[[meshes]]\nfile = "tri.obj"\nmatrix = [1,0,0,0, 0,1,0,0, 0,0,1,0, 0,0,0,1]\nscale = 2.0\n',
            "not both",
        ),
        ('[[meshes]]\nfile = "tri.stl"\n', "'tri.stl' is not a mesh file"),
        ("[render]\nspp = 4\n", "no [[meshes]] or [[lights]]"),
        ('[render]\nspp = 4\n[[meshes]\nfile = "tri.obj"\n', "TOML syntax error: .*line 3"),
    ],
)
def test_scene_file_errors(tmp_path, toml, problem):
    with pytest.raises(SceneError) as e:
        load_scene(scene(tmp_path, toml))
    msg = str(e.value)
    assert msg.startswith(str(tmp_path / "scene.toml") + ": "), msg
    if ".*" in problem:
        assert __import__("re").search(problem, msg), msg
    else:
        assert problem in msg, msg


@pytest.mark.parametrize(
    "files, toml, where, problem",
    [
        (
            {"nan.obj": "v 0 0 0\nv nan 0 0\nv 0 inf 0\nf 1 2 3\n"},
            '[[meshes]]\nfile = "nan.obj"\n',
            "nan.obj",
            "mesh 'nan.obj': 2 of 3 vertex positions are NaN or infinite",
        ),
        (
            {"flat.obj": "v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n"},
            '[[lights]]\nfile = "flat.obj"\nname = "key"\nradiance = [1, 1, 1]\n',
            "flat.obj",
            "light 'key' has zero area",
        ),
        (
            {
                "glow.obj": "mtllib glow.mtl\nusemtl hot\nv 0 0 0\nv 1 1 1\nv 2 2 2\nf 1 2 3\n",
                "glow.mtl": "newmtl hot\nKe 1 1 1\n",
            },
            '[[meshes]]\nfile = "glow.obj"\n',
            "glow.obj",
            "light 'hot' has zero area",
        ),
        (
            {"neg.obj": "mtllib n.mtl\nusemtl bad\n" + TRI_OBJ, "n.mtl": "newmtl bad\nKd 0.5 -0.1 0\n"},
            '[[meshes]]\nfile = "neg.obj"\n',
            "neg.obj",
            "material 'bad': base colour (0.5, -0.1, 0.0) must be",
        ),
        (
            {
                "s.gltf": '{"asset": {"version": "2.0"}, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],'
                '"meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "mode": 5}]}], "accessors": '
                '[{"componentType": 5126, "type": "VEC3", "count": 2}]}'
            },
            '[[meshes]]\nfile = "s.gltf"\n',
            "s.gltf",
            "has no triangles",
        ),
        (
            {"bad.obj": "v 0 0 0\nf 1 2 3\n"},
            '[[meshes]]\nfile = "bad.obj"\n',
            "bad.obj",
            "line 2: vertex index 2",
        ),
    ],
)
def test_broken_meshes_name_file_and_problem(tmp_path, files, toml, where, problem):
    with pytest.raises(SceneError) as e:
        load_scene(scene(tmp_path, toml, files))
    msg = str(e.value)
    assert e.value.source == str(tmp_path / where) and problem in msg, msg


def test_bad_specs(tmp_path):
    with pytest.raises(SceneError, match="nothere.toml: file not found"):
        load_scene(tmp_path / "nothere.toml")
    (tmp_path / "m.stl").write_text("solid")
    with pytest.raises(SceneError, match=r"m.stl: unknown file type '\.stl'"):
        load_scene(tmp_path / "m.stl")
    with pytest.raises(SceneError, match="is a directory"):
        load_scene(tmp_path)


def test_zero_normals_are_repaired_with_a_warning(tmp_path):
    obj = "v 0 0 0\nv 1 0 0\nv 0 1 0\nvn 0 0 0\nvn 0 0 2\nf 1//1 2//2 3//2\n"
    s = load_scene(write(tmp_path, "z.obj", obj))
    n = s.meshes[0].normals
    np.testing.assert_allclose(n, np.tile([0, 0, 1], (3, 1)), atol=1e-6)
    assert any("1 shading normals" in w for w in s.warnings)
    assert math.isclose(float(np.linalg.norm(n, axis=1).max()), 1.0, rel_tol=1e-6)


def test_scene_file_defaults(tmp_path):
    s = load_scene(scene(tmp_path, '[[meshes]]\nfile = "tri.obj"\n'))
    assert s.camera.look_at == pytest.approx((0.5, 0.5, 0.0)) and s.camera.fov_deg == 40
    sky = s.environment.image.pixels  # the default sky: bright above, darker below, grey
    assert s.environment.image.name == "default sky" and s.environment.color == (1, 1, 1)
    assert sky[0].min() > 0.95 and sky[-1].max() < 0.2 and np.all(sky[..., 0] == sky[..., 2])
    assert s.settings == RenderSettings()
    (m,) = s.meshes
    assert m.name == "tri.obj" and [x.name for x in m.materials] == ["default"]
