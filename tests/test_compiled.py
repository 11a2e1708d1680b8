"""The compiled scene: a plain, versioned record that round-trips exactly and is deterministic."""

from __future__ import annotations

import shutil
import subprocess
import sys

import msgspec
import numpy as np
import pytest
from conftest import CORNELL_DIR, REPO

from meshrender.compiled import ARRAY_SPECS, FORMAT_VERSION, ArrayRecord, CompiledScene, SceneRecord
from meshrender.scene.compile import compile_scene
from meshrender.scene.load import load_scene


def test_round_trip_is_exact(cornell):
    blob = cornell.to_bytes()
    back = CompiledScene.from_bytes(blob)
    assert set(back.arrays) == set(ARRAY_SPECS)
    for name, arr in cornell.arrays.items():
        assert back.arrays[name].dtype == arr.dtype and np.array_equal(back.arrays[name], arr), name
    assert back.settings == cornell.settings and back.material_names == cornell.material_names
    assert back.to_bytes() == blob


def test_compiling_is_deterministic_and_ignores_file_names(tmp_path):
    a = compile_scene(load_scene(CORNELL_DIR / "cornell_box.obj"))
    b = compile_scene(load_scene(CORNELL_DIR / "cornell_box.obj"))
    assert a.to_bytes() == b.to_bytes()
    for ext in ("obj", "mtl"):
        shutil.copy(CORNELL_DIR / f"cornell_box.{ext}", tmp_path / f"renamed.{ext}")
    (tmp_path / "renamed.obj").write_text(
        (tmp_path / "renamed.obj").read_text().replace("cornell_box.mtl", "renamed.mtl")
    )
    c = compile_scene(load_scene(tmp_path / "renamed.obj"))
    for name in ARRAY_SPECS:  # only the human-readable names differ
        assert np.array_equal(a.arrays[name], c.arrays[name]), name


def test_compiled_scene_has_no_taichi_inside():
    code = (
        "import sys; from meshrender.scene.compile import compile_scene; "
        "from meshrender.scene.load import load_scene; compile_scene(load_scene('cornell')).to_bytes(); "
        "print('taichi' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _record(cornell, **arrays) -> bytes:
    rec = msgspec.msgpack.decode(cornell.to_bytes(), type=SceneRecord)
    return msgspec.msgpack.encode(msgspec.structs.replace(rec, arrays={**rec.arrays, **arrays}))


def test_malformed_records_are_refused(cornell):
    with pytest.raises(ValueError, match="does not match its bytes"):
        CompiledScene.from_bytes(_record(cornell, positions=ArrayRecord("float32", [10**9, 3], b"\0" * 12)))
    with pytest.raises(ValueError, match="not in format"):
        CompiledScene.from_bytes(_record(cornell, positions=ArrayRecord("float64", [1, 3], b"\0" * 24)))
    with pytest.raises(ValueError, match="not in format"):
        CompiledScene.from_bytes(_record(cornell, surprise=ArrayRecord("float32", [1], b"\0" * 4)))
    rec = msgspec.msgpack.decode(cornell.to_bytes(), type=SceneRecord)
    with pytest.raises(ValueError, match=f"reads {FORMAT_VERSION}"):
        CompiledScene.from_bytes(msgspec.msgpack.encode(msgspec.structs.replace(rec, version=99)))
    with pytest.raises(msgspec.DecodeError):
        CompiledScene.from_bytes(b"\x93garbage")


def test_importing_kernels_does_not_start_taichi_and_kernels_are_cached_on_disk(tmp_path):
    code = (
        "import kernels.tracer, kernels.backend, taichi as ti\n"
        "assert ti.lang.impl.get_runtime().prog is None, 'ti.init ran at import'\n"
        "from meshrender.render import Renderer\n"
        "from meshrender.scene.compile import compile_scene\n"
        "from meshrender.scene.load import load_scene\n"
        "Renderer(compile_scene(load_scene('cornell')), backend='cpu').warm_up()\n"
    )
    env = {"MESHRENDER_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True, timeout=300)
    cached = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert cached, "no compiled kernel was written to the disk cache"


def _tampered(scene: CompiledScene, name: str, change) -> dict:
    arrays = {k: v.copy() for k, v in scene.arrays.items()}
    arrays[name] = change(arrays[name])
    return arrays


def _interior(links: np.ndarray) -> int:
    return int(np.flatnonzero(links[:, 1] == 0)[0])


def _set(arr: np.ndarray, where, value) -> np.ndarray:
    arr[where] = value
    return arr


@pytest.mark.parametrize(
    "name, change, said",
    [
        ("indices", lambda a: _set(a, (0, 0), 10**6), "indices"),
        ("indices", lambda a: _set(a, (0, 1), -1), "indices"),
        ("tri_material", lambda a: _set(a, 0, 999), "tri_material"),
        # a BVH whose links loop (a child pointing back at its parent), join (two parents) or leave
        ("bvh_links", lambda a: _set(a, (_interior(a), 0), _interior(a)), "bvh_links"),
        ("bvh_links", lambda a: _set(a, (_interior(a), 0), _interior(a) + 1), "bvh_links"),
        ("bvh_links", lambda a: _set(a, (_interior(a), 0), len(a) + 5), "bvh_links"),
        ("bvh_links", lambda a: _set(a, (np.flatnonzero(a[:, 1] > 0)[0], 1), 10**6), "bvh_links"),
        ("bvh_links", lambda a: _set(a, (np.flatnonzero(a[:, 1] > 0)[0], 1), -3), "bvh_links"),
        ("materials", lambda a: _set(a, (0, 4), 7.0), "materials"),  # MAT_BASE_TEX: no such tex_refs row
        ("materials", lambda a: _set(a, (0, 4), np.nan), "materials"),
        ("materials", lambda a: _set(a, (0, 0), 7.0), "material kind"),  # MAT_KIND: no such model
        ("emit_tri", lambda a: _set(a, 0, 10**6), "emit_tri"),
        ("camera", lambda a: a[:3], "camera"),
        ("normals", lambda a: a[:-1], "normals"),
        ("mesh_vertex_ranges", lambda a: _set(a, (0, 1), 10**6), "mesh_vertex_ranges"),
    ],
)
def test_a_compiled_scene_whose_indices_the_kernel_would_follow_outside_its_arrays_is_refused(
    cornell, name, change, said
):
    """A compiled scene can come from another peer: an index the kernel follows that leaves its
    array (or a BVH that is not a tree, so a traversal might never end) is an error naming the
    array, before anything renders it."""
    arrays = _tampered(cornell, name, change)
    with pytest.raises(ValueError, match=said):
        CompiledScene(source="hostile", arrays=arrays, settings=cornell.settings,
                      mesh_names=cornell.mesh_names, material_names=cornell.material_names,
                      texture_names=cornell.texture_names)  # fmt: skip


def test_texture_tables_are_checked_against_the_texels():
    """A textured asset's image table and its slots' image indices stay inside the texels."""
    from conftest import TEXTURED

    scene = compile_scene(load_scene(TEXTURED))
    assert len(scene.arrays["tex_info"]) and len(scene.arrays["tex_refs"])
    for name, change in (
        ("tex_info", lambda a: _set(a, (0, 1), 10**5)),  # an image wider than the texels hold
        ("tex_info", lambda a: _set(a, (0, 2), 0)),
        ("tex_refs", lambda a: _set(a, (0, 0), 99.0)),  # TEXREF_IMAGE: no such image
        ("tex_refs", lambda a: _set(a, (0, 0), 0.5)),
    ):
        with pytest.raises(ValueError, match=name):
            CompiledScene(source="hostile", arrays=_tampered(scene, name, change), settings=scene.settings,
                          mesh_names=scene.mesh_names, material_names=scene.material_names,
                          texture_names=scene.texture_names)  # fmt: skip
