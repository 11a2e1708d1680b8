"""The tests need nothing outside the repository: no file under tests/ names a folder beside the
checkout, every file the tests read from tests/data is tracked there with its ORIGIN.md, and the
committed textured asset is what tests/textured.py makes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import textured
from conftest import DATA, REPO, TEXTURED

from meshrender.scene.gltf import load_gltf

TESTS = REPO / "tests"
# the scene folder kept beside the checkout for the benchmarks, however a test might name it
_S = "sha" + "red"  # spelled in two halves so that this file does not match its own patterns
OUTSIDE = re.compile(
    rf"\.\./{_S}\b|{_S}/scenes|['\"]{_S}['\"]|REPO\.parent|parent\.parent\.parent|/[a-z]+/{_S}/"
)
TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".json", ".gltf", ".obj", ".mtl", ".xml", ".cfg", ".ini"}


def test_no_file_under_tests_names_a_folder_beside_the_checkout():
    offenders = []
    for path in sorted(TESTS.rglob("*")):
        if not path.is_file() or path.suffix not in TEXT_SUFFIXES or "__pycache__" in path.parts:
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert offenders == [], "tests must read only what the repository holds:\n" + "\n".join(offenders)


def test_the_pattern_catches_the_old_spellings():
    # the check above is only as good as its pattern: the forms the tests used to have
    old = [
        f'{_S.upper()} = REPO.{"parent"} / "{_S}"',
        f"x = '../{_S}/scenes/bunny/bunny.ply'",
        f"/srv/{_S}/a",  # an absolute path to it, wherever the checkout lies
        f"Path(__file__).{'parent.' * 3}",
    ]
    for line in old:
        assert OUTSIDE.search(line), line
    assert not OUTSIDE.search("# each chunk leaves an entry in the shared heap")


def test_each_scene_asset_says_where_it_came_from():
    for name in ("bunny", "cornell_mitsuba", "mitsuba", "textured_gltf"):
        text = (DATA / name / "ORIGIN.md").read_text()
        assert "License:" in text, name


def rounded(doc):
    """The glTF document with its numbers rounded (accessor bounds come from float32 trigonometry)."""
    if isinstance(doc, dict):
        return {k: rounded(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [rounded(v) for v in doc]
    return round(doc, 6) if isinstance(doc, float) else doc


def test_the_committed_textured_asset_is_what_the_script_makes(tmp_path):
    made = textured.write_textured(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in TEXTURED.parent.iterdir() if p.name != "ORIGIN.md"
    )
    assert rounded(json.loads(made.read_text())) == rounded(json.loads(TEXTURED.read_text()))
    for suffix in (".gltf", ".glb"):
        ours, theirs = load_gltf(made.with_suffix(suffix)), load_gltf(TEXTURED.with_suffix(suffix))
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_allclose(a.positions, b.positions, atol=1e-6)
            np.testing.assert_allclose(a.normals, b.normals, atol=1e-6)
            np.testing.assert_allclose(a.uvs, b.uvs, atol=1e-6)
            assert np.array_equal(a.indices, b.indices) and np.array_equal(a.material_ids, b.material_ids)
            for ma, mb in zip(a.materials, b.materials, strict=True):
                pa, pb = ma.base_color_texture.pixels, mb.base_color_texture.pixels
                assert pa.shape == pb.shape
                # PNG is lossless; the one JPEG may decode a little differently with another libjpeg
                assert np.abs(pa.astype(int) - pb).max() <= (8 if ma.name == "WoodMat" else 0), ma.name
    assert Path(textured.DATA) == TEXTURED.parent
