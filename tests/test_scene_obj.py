"""OBJ/MTL loader: every index form, polygons, vertex de-duplication, MTL materials, and errors
that name the file and the line."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write
from PIL import Image

from meshrender.errors import MissingAssetsError, SceneError
from meshrender.scene.obj import load_obj

QUAD = "v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\n"


def corners(mesh):
    """Per-triangle corner attributes, independent of vertex numbering."""
    out = {"p": mesh.positions[mesh.indices]}
    if mesh.uvs is not None:
        out["uv"] = mesh.uvs[mesh.indices]
    if mesh.normals is not None:
        out["n"] = mesh.normals[mesh.indices]
    return out


@pytest.mark.parametrize(
    "faces, has_uv, has_n",
    [
        ("f 1 2 3\nf 1 3 4\n", False, False),
        ("f 1/1 2/2 3/3\nf 1/1 3/3 4/4\n", True, False),
        ("f 1//1 2//1 3//1\nf 1//1 3//1 4//1\n", False, True),
        ("f 1/1/1 2/2/1 3/3/1\nf 1/1/1 3/3/1 4/4/1\n", True, True),
        ("f -4/-4/-1 -3/-3/-1 -2/-2/-1\nf -4/-4/-1 -2/-2/-1 -1/-1/-1\n", True, True),
        ("f 1/1/1 2/2/1 3/3/1 4/4/1\n", True, True),  # a quad, fan-triangulated
        ("f 1/1/1 2/2/1 3/3/1\nf 1/1/1 3/3/1 4/4/1\nf 1 2 3\n", True, True),  # mixed: per-token parser
    ],
)
def test_index_forms_give_the_same_triangles(tmp_path, faces, has_uv, has_n):
    text = QUAD + "vt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\nvn 0 0 1\n" + faces
    m = load_obj(write(tmp_path, "q.obj", text))
    expect = np.array([[[0, 0, 0], [1, 0, 0], [1, 1, 0]], [[0, 0, 0], [1, 1, 0], [0, 1, 0]]], np.float32)
    assert m.indices.dtype == np.int32 and m.positions.dtype == np.float32
    np.testing.assert_array_equal(m.positions[m.indices[:2]], expect)
    assert (m.uvs is not None) == has_uv and (m.normals is not None) == has_n
    if has_uv:  # OBJ v points up; MeshData uses glTF's v down: vt (x, y) -> (x, 1 - y)
        np.testing.assert_allclose(m.uvs[m.indices[:2]], np.stack([expect[..., 0], 1 - expect[..., 1]], -1))
    if has_n:
        np.testing.assert_array_equal(m.normals[m.indices[:2]], np.broadcast_to([0, 0, 1], (2, 3, 3)))
    if len(m.indices) == 3:  # the reference without vt/vn in a file that has them: zero uv and normal
        assert np.all(m.uvs[m.indices[2]] == [0, 1]) and np.all(m.normals[m.indices[2]] == 0)


def test_negative_indices_are_relative_to_the_line(tmp_path):
    text = "v 0 0 0\nv 1 0 0\nv 0 1 0\nf -3 -2 -1\nv 5 0 0\nv 6 0 0\nv 5 1 0\nf -3 -2 -1\n"
    m = load_obj(write(tmp_path, "n.obj", text))
    np.testing.assert_array_equal(m.positions[m.indices][:, 0], [[0, 0, 0], [5, 0, 0]])


def test_polygons_fan_triangulate(tmp_path):
    text = "v 0 0 0\nv 1 0 0\nv 2 1 0\nv 1 2 0\nv 0 1 0\nf 1 2 3 4 5\nf 1 2 3\n"
    m = load_obj(write(tmp_path, "p.obj", text))
    assert m.indices.tolist() == [[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 1, 2]]


def test_vertices_split_only_where_attributes_differ(tmp_path):
    # a quad with one normal shares its 4 vertices; a third triangle over the same positions with
    # another normal needs 3 more: 7 unique (v, vn) pairs
    text = QUAD + "vn 0 0 1\nvn 1 0 0\nf 1//1 2//1 3//1\nf 1//1 3//1 4//1\nf 1//2 2//2 3//2\n"
    m = load_obj(write(tmp_path, "c.obj", text))
    assert len(m.positions) == 7
    assert len({tuple(r) for r in np.hstack([m.positions, m.normals]).tolist()}) == 7
    assert m.indices[0][0] == m.indices[1][0] and m.indices[0][2] == m.indices[1][1]  # shared corners
    assert not set(m.indices[2].tolist()) & set(m.indices[:2].ravel().tolist())  # split corners
    np.testing.assert_array_equal(m.normals[m.indices[2]], np.broadcast_to([1, 0, 0], (3, 3)))
    np.testing.assert_array_equal(m.normals[m.indices[:2]], np.broadcast_to([0, 0, 1], (2, 3, 3)))


def test_random_files_match_a_reference_parser(tmp_path):
    """Fast paths and the per-token path against a plain Python reading of the same file."""
    rng = np.random.default_rng(7)
    for trial in range(6):
        nv, nt, nn = 30, 20, 10
        V = rng.normal(size=(nv, 3)).round(4)
        T = rng.random((nt, 2)).round(4)
        N = rng.normal(size=(nn, 3)).round(4)
        lines = [f"v {a} {b} {c}" for a, b, c in V] + [f"vt {a} {b}" for a, b in T]
        lines += [f"vn {a} {b} {c}" for a, b, c in N]
        form = trial % 4 if trial < 4 else None  # the last two mix forms per face
        ref = []
        for _ in range(25):
            k = int(rng.integers(3, 7))
            f = form if form is not None else int(rng.integers(0, 4))
            refs, toks = [], []
            for _ in range(k):
                vi, ti, ni = int(rng.integers(nv)), int(rng.integers(nt)), int(rng.integers(nn))
                neg = rng.random() < 0.3
                iv = vi - nv if neg else vi + 1
                it = ti - nt if neg else ti + 1
                in_ = ni - nn if neg else ni + 1
                toks.append([f"{iv}", f"{iv}/{it}", f"{iv}//{in_}", f"{iv}/{it}/{in_}"][f])
                refs.append((vi, ti if f in (1, 3) else None, ni if f in (2, 3) else None))
            lines.append("f " + " ".join(toks))
            ref += [(refs[0], refs[j], refs[j + 1]) for j in range(1, k - 1)]
        m = load_obj(write(tmp_path, f"r{trial}.obj", "\n".join(lines) + "\n"))
        got = corners(m)
        np.testing.assert_allclose(got["p"], [[V[c[0]] for c in t] for t in ref], rtol=1e-6)
        if form in (1, 3):
            uv = np.array([[T[c[1]] for c in t] for t in ref])
            np.testing.assert_allclose(got["uv"], np.stack([uv[..., 0], 1 - uv[..., 1]], -1), atol=1e-6)
        if form in (2, 3):
            n = np.array([[N[c[2]] for c in t] for t in ref])
            n /= np.linalg.norm(n, axis=-1, keepdims=True)
            np.testing.assert_allclose(
                got["n"] / np.linalg.norm(got["n"], axis=-1, keepdims=True), n, atol=1e-5
            )


def test_whitespace_comments_crlf_continuations(tmp_path):
    text = "# header\r\n  v 0 0 0\r\nv\t1 0 0 \r\nv 0 \\\r\n 1 0\r\n\r\ng grp\r\ns 1\r\nf 1 2 3\r\n"
    p = tmp_path / "w.obj"
    p.write_bytes(text.encode())
    m = load_obj(p)
    np.testing.assert_array_equal(m.positions[m.indices[0]], [[0, 0, 0], [1, 0, 0], [0, 1, 0]])


def test_mtl_materials(tmp_path):
    (tmp_path / "mats").mkdir()
    Image.new("RGB", (4, 2), (255, 0, 0)).save(tmp_path / "mats" / "tex.png")
    write(
        tmp_path,
        "mats/a.mtl",
        "newmtl red\nKd 0.5 0 0\nNs 10\nmap_Kd -s 1 1 1 -bm 0.5 tex.png\nmap_Bump b.png\n",
    )
    write(
        tmp_path, "mats/b.mtl", "newmtl lamp\nKd 1 1 1\nKe 4 3 2\nnewmtl gold\nKd 1 0.8 0.3\nPm 1\nPr 0.25\n"
    )
    text = QUAD + "mtllib mats/a.mtl mats/b.mtl\nf 1 2 3\nusemtl red\nf 1 3 4\nusemtl lamp\nf 1 2 4\n"
    text += "usemtl gold\nf 2 3 4\nusemtl nosuch\nf 1 2 3\n"
    warnings = []
    m = load_obj(write(tmp_path, "m.obj", text), warnings=warnings)
    mats = {x.name: x for x in m.materials}
    assert [m.materials[i].name for i in m.material_ids] == ["default", "red", "lamp", "gold", "nosuch"]
    assert mats["red"].base_color == (0.5, 0.0, 0.0) and mats["red"].kind == "diffuse"
    assert mats["red"].base_color_texture.pixels.shape == (2, 4, 3)
    assert mats["red"].base_color_texture.pixels[0, 0].tolist() == [255, 0, 0]
    assert mats["lamp"].emission == (4.0, 3.0, 2.0) and not mats["lamp"].two_sided_emission
    assert mats["gold"].kind == "conductor" and mats["gold"].roughness == 0.25
    assert mats["nosuch"].base_color == (0.8, 0.8, 0.8)
    assert any("'nosuch'" in w for w in warnings) and any("map_Bump" in w for w in warnings)


def test_missing_mtl_and_texture_listed_together(tmp_path):
    write(tmp_path, "a.mtl", "newmtl t\nmap_Kd gone.png\n")
    p = write(tmp_path, "m.obj", QUAD + "mtllib a.mtl nothere.mtl\nusemtl t\nf 1 2 3\n")
    with pytest.raises(MissingAssetsError) as e:
        load_obj(p)
    assert len(e.value.missing) == 2
    assert any(s.endswith("gone.png") for s in e.value.missing)
    assert any(s.endswith("nothere.mtl") for s in e.value.missing)
    assert "m.obj" in str(e.value)


@pytest.mark.parametrize(
    "text, line, problem",
    [
        (QUAD + "f 1 2 3\nbogus 1 2\n", 6, "unparsable line"),
        (QUAD + "f 1 2 9\n", 5, "vertex index 9 is out of range"),
        (QUAD + "f 1 2 -7\n", 5, "out of range"),
        (QUAD + "f 1 2 0\n", 5, "index 0"),
        (QUAD + "f 1 2\n", 5, "face with 2 vertices"),
        (QUAD + "v 1 2\nf 1 2 3\n", 5, "'v' needs 3 to 7 numbers"),
        (QUAD + "v 1 2 x\nf 1 2 3\n", 5, "cannot parse 'v' line"),
        (QUAD + "v 1 - 2\nf 1 2 3\n", 5, "cannot parse 'v' line"),
        (QUAD + "f 1 2 3\nf 1 2 3x\n", 6, "cannot parse face vertex '3x'"),
        (QUAD + "vt 0 0\nf 1/1 2/1 3/2\n", 6, "texture coordinate index 2 is out of range"),
    ],
)
def test_broken_obj_names_file_line_and_problem(tmp_path, text, line, problem):
    p = write(tmp_path, "bad.obj", text)
    with pytest.raises(SceneError) as e:
        load_obj(p)
    msg = str(e.value)
    assert "bad.obj" in msg and f"line {line}:" in msg and problem in msg, msg


def test_obj_without_faces_is_an_error(tmp_path):
    with pytest.raises(SceneError, match="no faces"):
        load_obj(write(tmp_path, "empty.obj", QUAD))


@pytest.mark.parametrize(
    "numbers",
    [
        ["0.123456", "-1.500000", "+2.250000", "-.5", "5.", "0.1", "-123456789.125", "0.30000000000000004"],
        ["1e-3", "-2.5E+2", "3", "0.1", "nan", "-0.0"],  # exponents, integers, nan: the float parser
    ],
)
def test_number_formats_parse_like_python_floats(tmp_path, numbers):
    vals = numbers + ["0.0"] * (-len(numbers) % 3)
    text = "".join(f"v {' '.join(vals[i : i + 3])}\n" for i in range(0, len(vals), 3)) + "f 1 2 1\n"
    m = load_obj(write(tmp_path, "num.obj", text))
    np.testing.assert_array_equal(m.positions.reshape(-1), np.array([float(v) for v in vals], np.float32))
