"""Camera keyframes: parsed and checked (naming the key or frame at fault), interpolated linearly
and held outside their range, carried by the compiled scene through bytes and the store, rendered
frame by frame (each frame the same bits however it is split); static scenes keep their ids."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write

from meshrender.compiled import CAM_FOV_DEG, CAM_POS, CompiledScene
from meshrender.errors import SceneError
from meshrender.render import render_frame
from meshrender.scene.compile import camera_at, compile_scene
from meshrender.scene.load import load_scene
from meshrender.settings import RenderSettings
from meshrender.store.chunkstore import ChunkStore
from meshrender.store.manifest import chunk_scene
from meshrender.store.scenes import import_scene, load_compiled
from meshrender.units import frame_units

TRI_OBJ = "v -1 -1 0\nv 1 -1 0\nv 0 1 0\nf 1 2 3\n"
BASE = """
[camera]
position = [0, 0, 4]
look_at = [0, 0, 0]
fov_deg = 40
{keys}
{animation}
[[meshes]]
file = "tri.obj"
"""
KEYS = """
[[camera.keyframes]]
frame = 10
position = [-2, 0, 4]
[[camera.keyframes]]
frame = 20
position = [2, 0, 4]
fov_deg = 60
"""
TINY = RenderSettings(width=16, height=16, spp=8, pass_spp=4, bucket_px=8, max_depth=3)


def scene(tmp_path, keys=KEYS, animation=""):
    write(tmp_path, "tri.obj", TRI_OBJ)
    return write(tmp_path, "scene.toml", BASE.format(keys=keys, animation=animation))


def test_keyframes_interpolate_linearly_and_hold_outside_their_range(tmp_path):
    s = compile_scene(load_scene(scene(tmp_path)))
    assert s.animated and s.frames == (10, 20)  # no [animation]: the keys' range
    pos = {f: camera_at(s.arrays, f)[CAM_POS : CAM_POS + 3] for f in (0, 10, 15, 20, 99)}
    assert pos[0].tolist() == pos[10].tolist() == [-2, 0, 4]  # held before the first key
    assert pos[15].tolist() == [0, 0, 4]
    assert pos[99].tolist() == pos[20].tolist() == [2, 0, 4]
    fov = [float(camera_at(s.arrays, f)[CAM_FOV_DEG]) for f in (10, 15, 20)]
    assert fov == pytest.approx([40, 50, 60])  # unset in the first key: from [camera]


def test_an_animation_table_sets_the_default_frames(tmp_path):
    s = compile_scene(load_scene(scene(tmp_path, animation="[animation]\nframes = [0, 47]")))
    assert s.frames == (0, 47)
    static = compile_scene(load_scene(scene(tmp_path, keys="")))
    assert not static.animated and static.frames == (0, 0)


@pytest.mark.parametrize(
    "keys, animation, words",
    [
        ("[[camera.keyframes]]\nframe = 5\n[[camera.keyframes]]\nframe = 5\n", "", "keyframes[1]: frame 5"),
        ("[[camera.keyframes]]\nframe = -1\n", "", "frame"),
        ("[[camera.keyframes]]\nframe = 1\nzoom = 2\n", "", "zoom"),
        ("[[camera.keyframes]]\nframe = 1\nposition = [0, 0, 0]\n", "", "keyframes[0] (frame 1)"),
        ("", "[animation]\nframes = [5, 2]", "the last comes before the first"),
        # each key is fine, but halfway between them the camera sits on the point it looks at
        ("[[camera.keyframes]]\nframe = 0\nposition = [0, 0, 4]\n"
         "[[camera.keyframes]]\nframe = 10\nposition = [0, 0, -4]\n", "", "camera at frame 5"),
    ],
)  # fmt: skip
def test_bad_keyframes_are_refused_naming_the_key_or_frame(tmp_path, keys, animation, words):
    with pytest.raises(SceneError, match=words.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        compile_scene(load_scene(scene(tmp_path, keys, animation)))


def test_static_scenes_keep_their_identity(tmp_path, cornell):
    # the built-in cornell's id: adding animation left it as it was (b7f2e85609d6 in format 2);
    # compiled format 4 (Step 8's materials, lights and glTF slots) gives it this one
    assert chunk_scene(cornell).scene_id.startswith("7fafd95a29bd")
    assert "camera_keys" not in cornell.arrays and "frames" not in cornell.arrays


def test_an_animated_scene_goes_through_bytes_and_the_store_whole(tmp_path):
    s = compile_scene(load_scene("cornell_orbit"))
    assert s.frames == (0, 23)
    assert CompiledScene.from_bytes(s.to_bytes()).equals(s)
    with ChunkStore(tmp_path / "store") as store:
        scene_id = import_scene(store, s).scene_id
        back = load_compiled(store, scene_id)
    assert back.equals(s) and back.frames == (0, 23)
    assert scene_id != chunk_scene(compile_scene(load_scene("cornell"))).scene_id


def test_each_frame_has_its_camera_and_the_same_bits_however_it_is_split(tmp_path, renderer_for):
    s = compile_scene(load_scene(scene(tmp_path)))
    arrays_before = {name: a.copy() for name, a in s.arrays.items()}
    r = renderer_for(s)
    a = render_frame(r, TINY, frame=10).image()
    b = render_frame(r, TINY, frame=20).image()
    assert not np.array_equal(a, b)
    # frame 10 again after frame 20 (the camera goes back), its units in another order
    units = frame_units(TINY, frame=10)[::-1]
    again = render_frame(r, TINY, frame=10, units=units).image()
    assert np.array_equal(a.view(np.uint32), again.view(np.uint32))
    # before the first key the camera holds: frame 3 sees what frame 10 sees (other samples)
    held = render_frame(r, TINY, frame=3).image()
    assert abs(float(held.mean()) - float(a.mean())) < 0.25 * float(a.mean()) + 1e-3
    # the CPU kernel reads the scene's own arrays; moving the camera between frames leaves them
    for name, a in s.arrays.items():
        assert np.array_equal(a, arrays_before[name]), name
