"""PLY loader: binary and ASCII, triangles/quads/mixed polygons, optional attributes, errors."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BUNNY
from plyfile import PlyData, PlyElement

from meshrender.errors import SceneError
from meshrender.scene.ply import load_ply


def write_ply(path, verts, faces, *, text=False, extra=(), face_prop="vertex_indices", byte_order="<"):
    vdtype = [("x", "f4"), ("y", "f4"), ("z", "f4")] + [(n, "f4") for n in extra] + [("red", "u1")]
    v = np.zeros(len(verts), vdtype)
    for j, n in enumerate(["x", "y", "z", *extra]):
        v[n] = [row[j] for row in verts]
    f = np.empty(len(faces), [(face_prop, "O")])
    f[face_prop] = [np.array(x, np.int32) for x in faces]
    PlyData(
        [
            PlyElement.describe(v, "vertex"),
            PlyElement.describe(f, "face", len_types={face_prop: "u1"}, val_types={face_prop: "i4"}),
        ],
        text=text,
        byte_order=byte_order,
    ).write(str(path))
    return path


SQUARE = [
    (0, 0, 0, 0, 0, 1, 0.0, 0.0),
    (1, 0, 0, 0, 0, 1, 1.0, 0.0),
    (1, 1, 0, 0, 0, 1, 1.0, 1.0),
    (0, 1, 0, 0, 0, 1, 0.0, 1.0),
    (2, 0.5, 0, 0, 0, 1, 1.0, 0.5),
]
ATTRS = ("nx", "ny", "nz", "s", "t")


@pytest.mark.parametrize("text", [False, True])
@pytest.mark.parametrize(
    "faces, expect",
    [
        ([[0, 1, 2], [0, 2, 3]], [[0, 1, 2], [0, 2, 3]]),
        ([[0, 1, 2, 3], [1, 4, 2, 3]], [[0, 1, 2], [0, 2, 3], [1, 4, 2], [1, 2, 3]]),
        ([[0, 1, 2, 3], [1, 4, 2]], [[0, 1, 2], [0, 2, 3], [1, 4, 2]]),
    ],
)
def test_ply_faces_and_attributes(tmp_path, text, faces, expect):
    p = write_ply(tmp_path / "m.ply", SQUARE, faces, text=text, extra=ATTRS)
    m = load_ply(p)
    assert m.indices.tolist() == expect and m.indices.dtype == np.int32
    np.testing.assert_allclose(m.positions, np.array(SQUARE)[:, :3])
    np.testing.assert_allclose(m.normals, np.broadcast_to([0, 0, 1], (5, 3)))
    np.testing.assert_allclose(m.uvs, np.stack([np.array(SQUARE)[:, 6], 1 - np.array(SQUARE)[:, 7]], 1))
    assert [x.name for x in m.materials] == ["default"] and m.materials[0].base_color == (0.8, 0.8, 0.8)
    assert m.material_ids.tolist() == [0] * len(expect)


def test_ply_variants(tmp_path):
    p = write_ply(tmp_path / "be.ply", SQUARE, [[0, 1, 2]], face_prop="vertex_index", byte_order=">")
    m = load_ply(p)
    assert m.indices.tolist() == [[0, 1, 2]] and m.normals is None and m.uvs is None
    np.testing.assert_allclose(m.positions[1], [1, 0, 0])


def test_bunny():
    m = load_ply(BUNNY)
    assert m.indices.shape == (69451, 3) and m.positions.shape == (35947, 3)
    assert np.isfinite(m.positions).all() and m.indices.max() < len(m.positions)


def test_truncated_binary_ply(tmp_path):
    p = write_ply(tmp_path / "t.ply", SQUARE, [[0, 1, 2], [0, 2, 3]])
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(SceneError) as e:
        load_ply(p)
    assert "t.ply" in str(e.value) and "truncated" in str(e.value)


@pytest.mark.parametrize("text", [False, True])
def test_ply_index_out_of_range(tmp_path, text):
    p = write_ply(tmp_path / "o.ply", SQUARE, [[0, 1, 2], [0, 2, 7]], text=text)
    with pytest.raises(SceneError) as e:
        load_ply(p)
    assert "o.ply" in str(e.value) and "face 1: vertex index 7 is out of range" in str(e.value)


def test_ply_degenerate_face_and_no_faces(tmp_path):
    p = write_ply(tmp_path / "d.ply", SQUARE, [[0, 1, 2], [0, 1]])
    with pytest.raises(SceneError, match="face 1 has 2 vertices"):
        load_ply(p)
    p = tmp_path / "pts.ply"
    p.write_text(
        "ply\nformat ascii 1.0\nelement vertex 1\n"
        + "".join(f"property float {a}\n" for a in "xyz")
        + "end_header\n0 0 0\n"
    )
    with pytest.raises(SceneError, match="no faces"):
        load_ply(p)


def test_ply_malformed_ascii_and_header(tmp_path):
    p = write_ply(tmp_path / "a.ply", SQUARE, [[0, 1, 2]], text=True)
    p.write_text(p.read_text().replace("3 0 1 2", "3 0 1 x"))
    with pytest.raises(SceneError, match="a.ply: broken PLY"):
        load_ply(p)
    q = tmp_path / "h.ply"
    q.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 99999999999999\n")
    with pytest.raises(SceneError, match="end_header"):
        load_ply(q)
    header = [
        "ply",
        "format binary_little_endian 1.0",
        "element vertex 999999999999",
        *(f"property float {a}" for a in "xyz"),
        "element face 1",
        "property list uchar int vertex_indices",
        "end_header",
    ]
    q.write_text("\n".join(header) + "\n")
    with pytest.raises(SceneError, match="the limits are"):
        load_ply(q)
