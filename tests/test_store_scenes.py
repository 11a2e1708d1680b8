"""Scenes through the on-disk store and the `meshrender store` commands, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import msgspec
import numpy as np
import pytest
from conftest import REPO

from meshrender.compiled import ARRAY_SPECS
from meshrender.output import read_exr
from meshrender.render import render_frame
from meshrender.scene.compile import compile_scene
from meshrender.scene.load import load_scene
from meshrender.store.chunkstore import ChunkStore
from meshrender.store.manifest import MissingChunksError, chunk_scene
from meshrender.store.scenes import import_scene, load_compiled


def test_import_dedupes_and_loads_back_exactly(tmp_path, cornell, big_textured):
    big = compile_scene(load_scene(big_textured))
    with ChunkStore(tmp_path / "store", durable=False) as store:
        first = import_scene(store, big)
        # 5 noise base colour images, and the 3 small metallic-roughness and normal maps
        assert big.arrays["tex_texels"].nbytes == 5 * 2048 * 1024 * 3 + 3 * 16 * 16 * 3
        assert first.new_bytes == first.total_bytes > big.arrays["tex_texels"].nbytes
        again = import_scene(store, big)
        assert again.scene_id == first.scene_id and again.new_bytes == 0 and again.new_chunks == 0
        import_scene(store, cornell)
        assert store.has_scene(first.scene_id)
        back = load_compiled(store, first.scene_id)
    for name in ARRAY_SPECS:
        assert np.array_equal(back.arrays[name], big.arrays[name]), name
    assert back.mesh_names == big.mesh_names and back.texture_names == big.texture_names


def test_missing_chunks_in_the_store_are_listed_by_name(tmp_path, big_textured):
    big = compile_scene(load_scene(big_textured))
    cut = chunk_scene(big)
    texels = next(a for a in cut.manifest.arrays if a.name == "tex_texels")
    victims = [texels.segments[0].chunks[0].hash, texels.segments[3].chunks[-1].hash]
    with ChunkStore(tmp_path / "store", durable=False) as store:
        rep = import_scene(store, big)
        for h in victims:  # a flipped bit on disk: found on read, quarantined
            path = store.blob_path(h)
            raw = bytearray(path.read_bytes())
            raw[len(raw) // 2] ^= 0x10
            path.write_bytes(bytes(raw))
        assert store.verify()["corrupt_total"] == 2
        with pytest.raises(MissingChunksError) as err:
            load_compiled(store, rep.scene_id)
    text = str(err.value)
    assert "2 chunk(s) missing" in text
    for k in (0, 3):
        assert big.texture_names[k] in text


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "meshrender", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_store_cli_add_stats_verify_gc_and_render_by_id(tmp_path, cornell, renderer_for):
    home = str(tmp_path / "home")
    p = run_cli("store", "add", "cornell", "--json", "--home", home)
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    assert rec["new_bytes"] == rec["total_bytes"] > 0 and len(rec["scene_id"]) == 64
    p = run_cli("store", "add", "cornell", "--home", home)
    assert p.returncode == 0 and "0 bytes new" in p.stdout and rec["scene_id"] in p.stdout
    stats = json.loads(run_cli("store", "stats", "--json", "--home", home).stdout)
    assert stats["scenes"] == 1 and stats["chunks"] == rec["chunks"]
    p = run_cli("store", "verify", "--home", home)
    assert p.returncode == 0 and f"{rec['chunks']} ok" in p.stdout
    assert run_cli("store", "gc", "--json", "--home", home).returncode == 0

    # render straight from the store by scene id: the same bits as from the files
    out = tmp_path / "by_id.exr"
    p = run_cli("render", rec["scene_id"], "--home", home, "--res", "32x32", "--spp", "4", "--backend", "cpu",
                "-o", str(out), "--json")  # fmt: skip
    assert p.returncode == 0, p.stderr
    settings = msgspec.structs.replace(cornell.settings, width=32, height=32, spp=4)
    here = render_frame(renderer_for(cornell), settings).image()
    assert np.array_equal(read_exr(out), here)

    # a bit flipped on disk: verify finds it, quarantines it, and exits 1
    with ChunkStore(tmp_path / "home" / "store") as store:
        victim = next(h for h in store.iter_hashes() if h != rec["scene_id"])
        path = store.blob_path(victim)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x01
    path.write_bytes(bytes(raw))
    p = run_cli("store", "verify", "--home", home)
    assert p.returncode == 1 and "1 corrupt" in p.stdout
    p = run_cli("render", rec["scene_id"], "--home", home, "--res", "8x8", "--spp", "1")
    assert p.returncode == 2 and "missing" in p.stderr
    # re-adding the scene restores the chunk
    p = run_cli("store", "add", "cornell", "--json", "--home", home)
    assert json.loads(p.stdout)["new_chunks"] == 1
    assert run_cli("store", "verify", "--home", home).returncode == 0
