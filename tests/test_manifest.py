"""Chunks and manifests: exact round trips, ids that ignore names and order, small deltas,
every missing chunk named at once, and hostile manifests refused before allocation."""

from __future__ import annotations

import dataclasses
import shutil
from functools import cache

import msgspec
import numpy as np
import pytest
from conftest import CORNELL_DIR, TEXTURED, write

from meshrender.compiled import ARRAY_SPECS
from meshrender.scene.compile import compile_scene
from meshrender.scene.load import load_scene
from meshrender.store.manifest import (
    CDC_MAX_BYTES,
    ArrayPart,
    ChunkRef,
    Manifest,
    ManifestError,
    MissingChunksError,
    Segment,
    assemble,
    chunk_scene,
    decode_manifest,
)

CORNELL_MESHES = CORNELL_DIR / "meshes"
WALLS = {"floor": "white", "ceiling": "white", "back": "white", "red-wall": "red", "green-wall": "green"}


@cache
def loaded(path):
    return load_scene(path)


@cache
def cut_of(path):
    """The chunked scene (the small textured asset, or `big_textured`: the same with 30 MiB of texels)."""
    return chunk_scene(compile_scene(loaded(path)))


def assemble_from(cut, chunks=None, meta=None):
    chunks = cut.chunks if chunks is None else chunks
    return assemble(
        cut.scene_id,
        cut.manifest_bytes,
        chunks.__getitem__,
        lambda hs: [h for h in hs if h not in chunks],
        cut.meta if meta is None else meta,
    )


def test_round_trip_is_array_for_array_identical(big_textured):
    scene = compile_scene(loaded(big_textured))
    cut = cut_of(big_textured)
    back = assemble_from(cut)
    for name in ARRAY_SPECS:
        a, b = scene.arrays[name], back.arrays[name]
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), name
    assert back.settings == scene.settings and back.mesh_names == scene.mesh_names
    assert back.to_bytes() == scene.to_bytes()


def test_chunks_are_bounded_and_large_parts_are_cut(big_textured):
    cut = cut_of(big_textured)
    sizes = {h: len(b) for h, b in cut.chunks.items() if h != cut.scene_id}
    assert max(sizes.values()) <= CDC_MAX_BYTES
    texels = next(a for a in cut.manifest.arrays if a.name == "tex_texels")
    assert len(texels.segments) == len(cut.meta["texture_names"]) == 8  # one segment per image
    big = [c.size for s in texels.segments for c in s.chunks]
    assert len(big) > 20 and 256 << 10 <= np.mean(big) <= 1 << 20  # CDC average in range
    small = {a.name: a for a in cut.manifest.arrays}
    for name in ("camera", "materials"):
        assert [len(s.chunks) for s in small[name].segments] == [1]  # chunks of their own
    assert all(len(s.chunks) == 1 for s in small["tex_info"].segments)  # one header per texture


def cornell_scene_file(tmp_path, order, names=None):
    """The Cornell walls as separate OBJ files listed in `order`, optionally renamed."""
    names = names or {k: k for k in WALLS}
    lines = [
        "[camera]\nposition = [0, 0, 3.9]\nlook_at = [0, 0, 0]\nfov_deg = 39.3\n",
        "[materials.white]\nbase_color = [0.8, 0.7, 0.6]\n[materials.red]\nbase_color = [0.6, 0.05, 0.05]\n",
        "[materials.green]\nbase_color = [0.1, 0.4, 0.1]\n",
        '[[lights]]\nfile = "sub/light.obj"\nradiance = [18, 14, 7]\n',
    ]
    (tmp_path / "sub").mkdir(parents=True, exist_ok=True)
    shutil.copy(CORNELL_MESHES / "light.obj", tmp_path / "sub" / "light.obj")
    for k in order:
        shutil.copy(CORNELL_MESHES / f"{k}.obj", tmp_path / f"{names[k]}.obj")
        lines.append(f'[[meshes]]\nfile = "{names[k]}.obj"\nmaterial = "{WALLS[k]}"\n')
    return write(tmp_path, "scene.toml", "".join(lines))


def test_same_content_same_id_whatever_names_paths_or_order(tmp_path):
    a = chunk_scene(compile_scene(load_scene(cornell_scene_file(tmp_path / "a", list(WALLS)))))
    b = chunk_scene(compile_scene(load_scene(cornell_scene_file(tmp_path / "b", list(WALLS)[::-1]))))
    renamed = {k: f"renamed_{i}" for i, k in enumerate(WALLS)}
    c = chunk_scene(
        compile_scene(load_scene(cornell_scene_file(tmp_path / "c", list(WALLS)[1:] + ["floor"], renamed)))
    )
    assert a.scene_id == b.scene_id == c.scene_id
    assert set(a.chunks) == set(c.chunks)
    assert a.meta["mesh_names"] != c.meta["mesh_names"]  # only the human names differ
    # and content does matter: another colour, another id
    path = cornell_scene_file(tmp_path / "d", list(WALLS))
    path.write_text(path.read_text().replace("0.6, 0.05, 0.05", "0.6, 0.05, 0.06"))
    assert chunk_scene(compile_scene(load_scene(path))).scene_id != a.scene_id


def test_the_glb_and_the_gltf_of_one_asset_are_one_scene():
    """Same content in another container under other names (the GLB holds its images inside):
    the same id and the same chunks, only the human names in the meta differ."""
    a, b = cut_of(TEXTURED), cut_of(TEXTURED.with_suffix(".glb"))
    assert a.scene_id == b.scene_id and set(a.chunks) == set(b.chunks)
    assert a.meta["mesh_names"] != b.meta["mesh_names"]


def new_bytes(before, after) -> int:
    return sum(len(b) for h, b in after.chunks.items() if h not in before.chunks)


def test_moving_the_camera_changes_only_the_camera_chunk(big_textured):
    scene = loaded(big_textured)
    moved = dataclasses.replace(scene, camera=dataclasses.replace(scene.camera, position=(0.1, 0.4, 1.5)))
    a, b = cut_of(big_textured), chunk_scene(compile_scene(moved))
    assert a.scene_id != b.scene_id
    changed = {h for h in b.chunks if h not in a.chunks} - {b.scene_id}
    camera = next(p for p in b.manifest.arrays if p.name == "camera").segments[0].chunks[0].hash
    assert changed == {camera}


def test_changing_one_material_adds_under_one_percent(big_textured):
    scene = loaded(big_textured)
    edited = dataclasses.replace(scene, meshes=[dataclasses.replace(m) for m in scene.meshes])
    target = edited.meshes[0].materials[0]
    recoloured = dataclasses.replace(target, base_color=(0.2, 0.5, 0.9), roughness=0.7)
    for m in edited.meshes:
        m.materials = [recoloured if x is target else x for x in m.materials]
    a, b = cut_of(big_textured), chunk_scene(compile_scene(edited))
    assert a.scene_id != b.scene_id
    added = new_bytes(a, b)
    assert 0 < added <= 0.01 * a.total_bytes, (added, a.total_bytes)


def test_all_missing_chunks_are_named_at_once():
    cut = cut_of(TEXTURED)
    parts = {p.name: p for p in cut.manifest.arrays}
    tex_chunk = parts["tex_texels"].segments[2].chunks[0].hash
    pos_chunk = parts["positions"].segments[1].chunks[0].hash
    chunks = {h: b for h, b in cut.chunks.items() if h not in (tex_chunk, pos_chunk)}
    with pytest.raises(MissingChunksError) as err:
        assemble_from(cut, chunks)
    text = str(err.value)
    assert "2 chunk(s) missing" in text
    assert cut.meta["texture_names"][2] in text and cut.meta["mesh_names"][1] in text
    # without human names, the structural labels still say where
    with pytest.raises(MissingChunksError, match="tex_texels of texture 2"):
        assemble_from(cut, chunks, meta={})


def hostile(**changes) -> bytes:
    cut = cut_of(TEXTURED)
    return msgspec.msgpack.encode(msgspec.structs.replace(cut.manifest, **changes))


def test_hostile_manifests_are_refused_before_allocation():
    cut = cut_of(TEXTURED)
    ref = ChunkRef("0" * 64, 12)
    huge = ArrayPart(name="positions", dtype="<f4", shape=[1 << 33, 3], segments=[Segment("all", [ref])])
    others = [a for a in cut.manifest.arrays if a.name != "positions"]
    cases = [
        (hostile(arrays=[huge, *others]), "is 103079215104 bytes, its chunks 12"),
        (hostile(arrays=others), "missing or unknown"),
        (hostile(version=9), "manifest version 9"),
        (hostile(format_version=1), "compiled-scene format 1"),
        (b"\x93not a manifest", "malformed manifest"),
    ]
    bad = msgspec.structs.replace(cut.manifest.arrays[0], dtype="<f8")
    cases.append((hostile(arrays=[bad, *cut.manifest.arrays[1:]]), "is not"))
    for data, message in cases:
        with pytest.raises(ManifestError, match=message):
            decode_manifest(data)
    with pytest.raises(ManifestError, match="do not hash"):
        decode_manifest(cut.manifest_bytes, "f" * 64)
    with pytest.raises(msgspec.ValidationError):  # counts bounded by the schema itself
        msgspec.convert({"hash": "x", "size": 1}, ChunkRef)
    assert isinstance(decode_manifest(cut.manifest_bytes, cut.scene_id), Manifest)
