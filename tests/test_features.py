"""The tracer built per scene from the parts it uses (kernels/features.py): which parts each scene
needs, and that the kernel without the others renders the very bits of the kernel with all of them."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
from conftest import DATA, TEXTURED

from kernels.features import (
    F_ALL,
    F_ALPHA,
    F_CONDUCTOR,
    F_DIELECTRIC,
    F_DIFFUSE,
    F_ENV,
    F_GLTF,
    F_LIGHTS,
    F_PLASTIC,
    F_TEXTURES,
    describe,
    features_of,
)
from meshrender.render import Renderer, render_frame
from meshrender.scene.compile import compile_scene
from meshrender.scene.load import load_scene

MITSUBA = DATA / "mitsuba"
SCENES = {  # together they hold every part
    "cornell": F_DIFFUSE,
    str(TEXTURED): F_TEXTURES | F_ALPHA | F_ENV | F_GLTF,
    str(MITSUBA / "env_sun.xml"): F_ENV | F_LIGHTS | F_DIFFUSE,
    str(MITSUBA / "rough_glass.xml"): F_ENV | F_DIFFUSE | F_DIELECTRIC,
    str(MITSUBA / "rough_gold.xml"): F_ENV | F_DIFFUSE | F_CONDUCTOR,
    str(MITSUBA / "plastic.xml"): F_ENV | F_DIFFUSE | F_PLASTIC,
}


@pytest.fixture(scope="module")
def scenes():
    return {spec: compile_scene(load_scene(spec)) for spec in SCENES}


def test_each_scene_needs_the_parts_it_uses(scenes):
    for spec, want in SCENES.items():
        assert features_of(scenes[spec].arrays) == want, (spec, describe(features_of(scenes[spec].arrays)))
    union = 0
    for want in SCENES.values():
        union |= want
    assert union == F_ALL  # the scenes below leave no part untested
    assert describe(F_DIFFUSE | F_TEXTURES) == "textures, diffuse"


@pytest.mark.parametrize("spec", list(SCENES))
def test_a_scene_kernel_renders_the_bits_of_the_whole_kernel(scenes, spec):
    """What a part left out would have done is nothing, for a scene that does not use it."""
    scene = scenes[spec]
    settings = msgspec.structs.replace(scene.settings, width=24, height=20, spp=4, pass_spp=4, max_depth=6)
    r = Renderer(scene, backend="cpu")
    assert r.features == SCENES[spec]
    own = render_frame(r, settings)
    r.features = F_ALL  # the same renderer and arrays, the kernel with every part
    r._compiled = r._launched()
    whole = render_frame(r, settings)
    assert own.image().mean() > 0.0
    assert np.array_equal(own.image().view(np.uint32), whole.image().view(np.uint32)), spec
    for a, b in zip(own.aov_images(), whole.aov_images(), strict=True):  # albedo, normal
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32)), spec
