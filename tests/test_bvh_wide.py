"""The kernel's wide tree (meshrender.bvh_wide) and the kernel's walk of it.

The structural checks read the wide rows on their own: every triangle under exactly one leaf
link, each child's box the box of the binary node it stands for, and the traversal stack bound,
also on the deepest trees check_arrays accepts. The kernel checks run kernels.tracer.intersect
itself, in a small kernel of their own, against a loop over every triangle with the kernel's own
triangle test: the walk may only skip boxes that hold nothing nearer, so the t is the same bits.
"""

import numpy as np  # no "from __future__ import annotations": Taichi reads the kernels' annotations
import pytest
import taichi as ti
from taichi.math import vec3
from test_bvh import bunny, random_soup, rays_at

from kernels.tracer import face_normal, intersect, tri_hit
from meshrender.bvh import DEPTH_MAX, build_bvh
from meshrender.bvh_wide import (
    BOX_COLUMNS,
    EMPTY,
    LEAF_TRIS_LINKED,
    LINK_COLUMNS,
    STACK_DEPTH,
    TRI_FLOATS,
    WIDE_FLOATS,
    WIDE_LINKS,
    WIDTH,
    triangle_rows,
    wide_nodes,
)
from meshrender.compiled import check_arrays
from meshrender.render import traversal_arrays

# ---------------------------------------------------------------- structure


def binary_of_box(bounds):
    """Binary node id by box bytes (boxes of distinct nodes can coincide: then any of them)."""
    return {bounds[i].tobytes(): i for i in range(len(bounds))}


def stack_need(nodes: np.ndarray) -> int:
    """The most traversal stack entries a walk of `nodes` can hold at once, found by reading the
    rows on their own (wide_nodes keeps its own count, and refuses a tree over STACK_DEPTH)."""
    links = nodes[:, LINK_COLUMNS].view(np.int32)
    need = np.zeros(len(nodes), np.int64)
    need[0] = 1
    most = 1
    for i in range(len(nodes)):  # a parent's row comes before its children's (breadth first)
        used = links[i] != EMPTY
        child = need[i] - 1 + int(used.sum())
        most = max(most, child)
        inner = links[i][used & (links[i] >= 0)]
        need[inner] = child
    return most


def check_wide(bounds, links, n_tris) -> np.ndarray:
    nodes = wide_nodes(bounds, links)
    assert nodes.dtype == np.float32 and nodes.shape[1] == WIDE_FLOATS
    kid = nodes[:, LINK_COLUMNS].view(np.int32)
    used = kid != EMPTY
    assert np.all(used.sum(axis=1) >= 1)
    inner = kid[used & (kid >= 0)]
    # a tree: every wide node but the root is named once, by an earlier row (breadth first)
    np.testing.assert_array_equal(np.sort(inner), np.arange(1, len(nodes)))
    parent_row = np.repeat(np.arange(len(nodes))[:, None], WIDTH, axis=1)[used & (kid >= 0)]
    assert np.all(parent_row < inner)
    # leaves: each triangle exactly once, in runs of 1..7
    code = ~kid[used & (kid < 0)]
    first, count = code >> 3, code & 7
    cover = np.zeros(n_tris, np.int64)
    for f, c in zip(first, count, strict=True):
        assert c >= 1
        cover[f : f + c] += 1
    np.testing.assert_array_equal(cover, 1)
    # each child's box is a binary node's box, bit for bit, and a leaf link's is that leaf's
    by_box = binary_of_box(bounds)
    boxes = np.empty((len(nodes), WIDTH, 6), np.float32)  # (row, child, lo xyz hi xyz)
    boxes[:, :, BOX_COLUMNS] = nodes[:, :WIDE_LINKS].reshape(-1, 6, WIDTH).transpose(0, 2, 1)
    for r, c in zip(*np.nonzero(used), strict=True):
        b = by_box.get(np.ascontiguousarray(boxes[r, c]).tobytes())
        assert b is not None, f"row {r} child {c}: a box that is no binary node's"
        if kid[r, c] < 0:
            assert links[b, 1] > 0 and (~kid[r, c]) >> 3 == links[b, 0]
    assert stack_need(nodes) <= STACK_DEPTH
    # widened wherever it could be: a node of fewer than WIDTH children has only leaves among them
    # (none of these trees comes near the stack bound, which would keep nodes two wide)
    narrow = used.sum(axis=1) < WIDTH
    assert not np.any((kid[narrow] >= 0) & used[narrow])
    return nodes


@pytest.mark.parametrize("n", [1, 2, 5, 300, 4000])
def test_soup_collapses_into_a_wide_tree(n):
    soup = random_soup(n, seed=n)
    bvh = build_bvh(*soup)
    nodes = check_wide(bvh.bounds, bvh.links, n)
    if n >= 300:
        kid = nodes[:, LINK_COLUMNS].view(np.int32)
        # eight slots, of which the bottom nodes fill fewer (their subtrees run out of interior
        # nodes to open): about five on average here, and a quarter the binary interior nodes
        assert np.mean(np.sum(kid != EMPTY, axis=1)) > 4.5
        assert len(nodes) < 0.3 * (bvh.node_count - bvh.leaf_count)


def test_bunny_collapses_into_a_wide_tree():
    bvh = build_bvh(*bunny())
    nodes = check_wide(bvh.bounds, bvh.links, len(bunny()[0]))
    kid = nodes[:, LINK_COLUMNS].view(np.int32)
    assert np.mean(np.sum(kid != EMPTY, axis=1)) > 3.5  # 3.9: leaves of 1.85 triangles end it early
    assert len(nodes) < 0.4 * (bvh.node_count - bvh.leaf_count)


def test_a_tree_the_kernel_stack_cannot_walk_is_refused_at_upload(monkeypatch):
    # the widening rule keeps every accepted tree within STACK_DEPTH; the upload checks it anyway,
    # since the kernel pushes without a test: with a stack of 5 the bunny's tree cannot be walked
    import meshrender.bvh_wide as bvh_wide

    bvh = build_bvh(*bunny())
    monkeypatch.setattr(bvh_wide, "STACK_DEPTH", 5)
    with pytest.raises(ValueError, match="stack entries, the kernel has 5"):
        bvh_wide.wide_nodes(bvh.bounds, bvh.links)


def test_no_triangles_and_a_root_leaf():
    empty = wide_nodes(np.zeros((0, 6), np.float32), np.zeros((0, 2), np.int32))
    assert empty.shape == (1, WIDE_FLOATS) and np.all(empty[:, LINK_COLUMNS].view(np.int32) == EMPTY)
    bvh = build_bvh(*random_soup(1, seed=3))
    one = check_wide(bvh.bounds, bvh.links, 1)
    assert len(one) == 1


def synthetic_tree(shape: str, depth: int):
    """A binary tree in check_arrays' layout of exactly `depth` levels below the root: a caterpillar
    (each interior node's right child a leaf) or a zig-zag (the leaf alternately left and right).
    Every node's box differs (they shrink with the node's index)."""
    links, bounds, tri = [], [], 0

    def box():
        s = 1.0 / (len(links) + 1)
        return [-s, -s, -s, s, s, s]

    def leaf(d):
        nonlocal tri
        links.append([tri, 1])
        bounds.append(box())
        tri += 1

    def node(d):  # pre-order: this node, then its left subtree, then its right
        if d == depth:
            return leaf(d)
        me = len(links)
        links.append([0, 0])
        bounds.append(box())
        if shape == "caterpillar" or d % 2 == 0:
            node(d + 1)
            links[me][0] = len(links)
            leaf(d + 1)
        else:
            leaf(d + 1)
            links[me][0] = len(links)
            node(d + 1)

    node(0)
    return np.array(bounds, np.float32), np.array(links, np.int32), tri


@pytest.mark.parametrize("shape", ["caterpillar", "zigzag"])
def test_deepest_accepted_trees_keep_within_the_stack(shape):
    bounds, links, n_tris = synthetic_tree(shape, DEPTH_MAX)
    check_wide(bounds, links, n_tris)


def test_a_tree_deeper_than_the_kernel_walks_is_refused():
    # a compiled scene from a peer names its own tree: check_arrays (run on every CompiledScene,
    # from the network or the store) takes one as deep as DEPTH_MAX and not a level more
    from meshrender.scene.compile import compile_scene
    from meshrender.scene.load import load_scene

    arrays = dict(compile_scene(load_scene("cornell")).arrays)
    for depth, ok in ((DEPTH_MAX, True), (DEPTH_MAX + 1, False)):
        bounds, links, _ = synthetic_tree("zigzag", depth)
        links[links[:, 1] > 0, 0] = 0  # every leaf names triangle 0: the scene's one is enough
        arrays["bvh_bounds"], arrays["bvh_links"] = bounds, links
        if ok:
            check_arrays(arrays)
        else:
            with pytest.raises(ValueError, match=f"bvh_links.*deeper than {DEPTH_MAX} levels"):
                check_arrays(arrays)
    bounds, links, _ = synthetic_tree("zigzag", 3)
    links[links[:, 1] > 0] = [0, 8]  # leaves of 8 triangles: more than a leaf link holds
    arrays["bvh_bounds"], arrays["bvh_links"] = bounds, links
    with pytest.raises(ValueError, match="bvh_links.*a leaf of more than 7 triangles"):
        check_arrays(arrays)


# ---------------------------------------------------------------- the kernel's walk

NODES_T = ti.types.ndarray(dtype=ti.types.vector(WIDE_FLOATS, ti.f32), ndim=1)
TRIS_T = ti.types.ndarray(dtype=ti.types.vector(TRI_FLOATS, ti.f32), ndim=1)
F32_2D = ti.types.ndarray(dtype=ti.f32, ndim=2)


@ti.kernel
def _walk_k(nodes: NODES_T, tri_xf: TRIS_T, n_tris: ti.i32, rays: F32_2D, out: F32_2D):
    """rays rows: o (3), d (3), t_max; out rows: walk t, walk tri, any-hit tri, every-triangle t."""
    for r in range(rays.shape[0]):
        o = vec3(rays[r, 0], rays[r, 1], rays[r, 2])
        d = vec3(rays[r, 3], rays[r, 4], rays[r, 5])
        t_max = rays[r, 6]
        h = intersect(tri_xf, nodes, o, d, t_max, 0)
        a = intersect(tri_xf, nodes, o, d, t_max, 1)
        best = t_max
        for k in range(n_tris):
            t, u, v = tri_hit(tri_xf, k, o, d)
            if t < best:
                best = t
        out[r, 0] = h.t
        out[r, 1] = ti.f32(h.tri)
        out[r, 2] = ti.f32(a.tri)
        out[r, 3] = best


def walk(v0, v1, v2, origins, directions, t_max):
    from kernels.backend import init_backend

    init_backend("cpu")
    bvh = build_bvh(v0, v1, v2)
    corners = np.stack([v0, v1, v2], axis=1)[bvh.order].astype(np.float32)
    arrays = {
        "positions": corners.reshape(-1, 3),
        "indices": np.arange(3 * len(v0), dtype=np.int32).reshape(-1, 3),
        "bvh_bounds": bvh.bounds,
        "bvh_links": bvh.links,
    }
    ta = traversal_arrays(arrays)
    nodes = ti.ndarray(ti.types.vector(WIDE_FLOATS, ti.f32), shape=len(ta["bvh_node"]))
    nodes.from_numpy(ta["bvh_node"])
    tris = ti.ndarray(ti.types.vector(TRI_FLOATS, ti.f32), shape=len(ta["tri_xf"]))
    tris.from_numpy(ta["tri_xf"])
    rays = np.zeros((len(origins), 7), np.float32)
    rays[:, 0:3], rays[:, 3:6], rays[:, 6] = origins, directions, t_max
    out = np.zeros((len(origins), 4), np.float32)
    _walk_k(nodes, tris, len(v0), rays, out)
    return out


def assert_walk_finds_the_nearest(out, t_max):
    walk_t, walk_tri, any_tri, every_t = out.T
    np.testing.assert_array_equal(walk_t, every_t)  # bit for bit: the same test on the same triangle
    hit = every_t < t_max
    np.testing.assert_array_equal(walk_tri >= 0, hit)
    np.testing.assert_array_equal(any_tri >= 0, hit)  # any-hit: a hit whenever there is one
    return int(hit.sum())


@pytest.mark.parametrize("seed", [0, 1])
def test_kernel_walk_finds_the_nearest_hit_in_a_soup(seed):
    soup = random_soup(2000, seed=seed)
    origins, directions = rays_at([0, 0, 0], [1, 1, 1], 3000, seed=seed + 10)
    t_max = np.where(np.arange(3000) % 3 == 0, 0.5, np.inf)  # some segments end before the hits
    out = walk(*soup, origins, directions, t_max)
    assert assert_walk_finds_the_nearest(out, t_max) > 1000


def test_kernel_walk_finds_the_nearest_hit_in_leaves_of_up_to_seven(monkeypatch):
    # this build makes leaves of at most LEAF_TRIS_MAX (4), which the kernel tests unrolled; a
    # peer's tree may hold up to seven a leaf (LEAF_TRIS_LINKED), which it finishes in a loop
    import meshrender.bvh as bvh_mod

    monkeypatch.setattr(bvh_mod, "LEAF_TRIS_MAX", LEAF_TRIS_LINKED)
    monkeypatch.setattr(bvh_mod, "INTERSECT_COST", 0.05)  # triangles cheap: leaves as big as allowed
    soup = random_soup(3000, seed=5)
    counts = build_bvh(*soup).links[:, 1]
    assert counts.max() == LEAF_TRIS_LINKED and np.sum(counts > 4) > 100
    origins, directions = rays_at([0, 0, 0], [1, 1, 1], 3000, seed=15)
    out = walk(*soup, origins, directions, np.inf)
    assert assert_walk_finds_the_nearest(out, np.inf) > 1000


def test_kernel_walk_finds_the_nearest_hit_on_the_bunny():
    v0, v1, v2 = bunny()
    lo = np.minimum(v0.min(0), v1.min(0))
    hi = np.maximum(v0.max(0), v1.max(0))
    origins, directions = rays_at(lo, hi, 2000, seed=7)
    out = walk(v0, v1, v2, origins, directions, np.inf)
    assert assert_walk_finds_the_nearest(out, np.inf) > 500


# ---------------------------------------------------------------- the triangle test


@ti.kernel
def _tri_k(tri_xf: TRIS_T, rays: F32_2D, out: F32_2D):
    """Ray r against triangle r: out rows t, u, v, then the face normal."""
    for r in range(rays.shape[0]):
        o = vec3(rays[r, 0], rays[r, 1], rays[r, 2])
        d = vec3(rays[r, 3], rays[r, 4], rays[r, 5])
        t, u, v = tri_hit(tri_xf, r, o, d)
        n = face_normal(tri_xf, r)
        out[r, 0], out[r, 1], out[r, 2] = t, u, v
        out[r, 3], out[r, 4], out[r, 5] = n.x, n.y, n.z


def positions_indices(corners):
    """(n, 3 corners, xyz) as triangle_rows takes them: float32 positions and index rows."""
    n = len(corners)
    return corners.astype(np.float32).reshape(-1, 3), np.arange(3 * n, dtype=np.int32).reshape(n, 3)


def tri_test(corners, origins, directions):
    from kernels.backend import init_backend

    init_backend("cpu")
    rows = triangle_rows(*positions_indices(corners))
    tris = ti.ndarray(ti.types.vector(TRI_FLOATS, ti.f32), shape=len(rows))
    tris.from_numpy(rows)
    rays = np.concatenate([origins, directions], axis=1).astype(np.float32)
    out = np.zeros((len(rays), 6), np.float32)
    _tri_k(tris, rays, out)
    return out


def test_triangle_test_agrees_with_float64_moller_trumbore():
    rng = np.random.default_rng(3)
    n = 4000
    corners = rng.uniform(-1, 1, (n, 3, 3)).astype(np.float32)
    # rays from around the triangle towards a random point of its plane, most of them inside it
    bary = rng.uniform(-0.3, 1.0, (n, 2))
    c = corners.astype(np.float64)
    e1, e2 = c[:, 1] - c[:, 0], c[:, 2] - c[:, 0]
    target = c[:, 0] + bary[:, :1] * e1 + bary[:, 1:] * e2
    origins = rng.uniform(-3, 3, (n, 3))
    directions = target - origins
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    out = tri_test(corners, origins.astype(np.float32), directions.astype(np.float32))
    o = origins.astype(np.float32).astype(np.float64)
    d = directions.astype(np.float32).astype(np.float64)
    pv = np.cross(d, e2)
    det = np.einsum("ij,ij->i", e1, pv)
    tv = o - c[:, 0]
    u = np.einsum("ij,ij->i", tv, pv) / det
    qv = np.cross(tv, e1)
    v = np.einsum("ij,ij->i", d, qv) / det
    t = np.einsum("ij,ij->i", e2, qv) / det
    inside = (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
    normal = np.cross(e1, e2)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    square = np.abs(np.einsum("ij,ij->i", d, normal)) > 0.05  # not grazing: float32 is ill-conditioned there
    clear = inside & square & (np.minimum(np.minimum(u, v), 1 - u - v) > 1e-3)  # and not on an edge
    outside = ~inside & ((u < -1e-3) | (v < -1e-3) | (u + v > 1 + 1e-3))
    assert clear.sum() > 1000 and outside.sum() > 1000
    assert np.all(np.isfinite(out[clear, 0])) and np.all(np.isinf(out[outside, 0]))
    np.testing.assert_allclose(out[clear, 0], t[clear], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out[clear, 1], u[clear], atol=1e-4)
    np.testing.assert_allclose(out[clear, 2], v[clear], atol=1e-4)
    np.testing.assert_allclose(out[:, 3:6], normal, atol=1e-5)


def test_triangle_test_never_hits_a_degenerate_triangle():
    p = np.array([0.2, -0.1, 0.0], np.float32)
    corners = np.array(
        [
            [p, p, p],  # a point
            [p, p + [1, 0, 0], p + [2, 0, 0]],  # three on a line
            [p, p + [1, 0, 0], p + [1, 0, 0]],  # two the same
            [p, p + [np.inf, 0, 0], p + [0, 1, 0]],  # a corner at infinity
        ],
        np.float32,
    )
    rows = triangle_rows(*positions_indices(corners))
    assert np.all(rows[:, 4:] == 0)  # a zero transform
    origins = np.tile([[0.3, 0.0, 1.0]], (4, 1)).astype(np.float32)
    directions = np.tile([[0.0, 0.0, -1.0]], (4, 1)).astype(np.float32)
    out = tri_test(corners, origins, directions)
    assert np.all(np.isinf(out[:, 0]))  # the ray passes through each of them, and misses
