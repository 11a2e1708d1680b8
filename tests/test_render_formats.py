"""OBJ, PLY and glTF scenes load, compile and render an image that is not black."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
from conftest import BUNNY, CORNELL_DIR, TEXTURED

from meshrender.render import render_frame
from meshrender.scene.compile import compile_scene
from meshrender.scene.load import load_scene

FILES = {
    "obj": CORNELL_DIR / "cornell_box.obj",
    "ply": BUNNY,
    "gltf": TEXTURED,
}


@pytest.mark.parametrize("fmt", sorted(FILES))
def test_format_renders_an_image(fmt, renderer_for):
    scene = compile_scene(load_scene(FILES[fmt]))
    settings = msgspec.structs.replace(scene.settings, width=48, height=48, spp=4, pass_spp=4)
    img = render_frame(renderer_for(scene), settings).image()
    assert np.isfinite(img).all()
    assert img.mean() > 0.05
    # the object shows: the frame is not one flat colour
    lum = img.mean(-1)
    assert (np.abs(lum - np.median(lum)) > 0.05).mean() > 0.05


def test_textured_gltf_uses_its_textures(renderer_for):
    loaded = load_scene(FILES["gltf"])
    scene = compile_scene(loaded)
    # five base colour images (glass is shared by two materials): three 128x128, 64x64, 128x64;
    # and the 16x16 normal map and two metallic-roughness maps
    assert len(scene.texture_names) == 8
    assert scene.arrays["tex_texels"].shape[0] == 3 * 128 * 128 + 64 * 64 + 128 * 64 + 3 * 16 * 16
    settings = msgspec.structs.replace(scene.settings, width=48, height=48, spp=4, pass_spp=4)
    img = render_frame(renderer_for(scene), settings).image()
    # the same scene with every texture dropped renders differently
    for mesh in loaded.meshes:
        for m in mesh.materials:
            m.base_color_texture = None
    flat = compile_scene(loaded)
    img_flat = render_frame(renderer_for(flat), settings).image()
    assert np.abs(img - img_flat).mean() > 0.01
