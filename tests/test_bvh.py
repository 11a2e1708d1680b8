"""BVH build and reference traversal: structure, conservative bounds, hits against brute force, edge cases.

The structural checks walk the flattened arrays on their own. The hit checks compare `intersect_closest`
with a brute-force Möller–Trumbore written here, independently, over every triangle.
"""

from __future__ import annotations

import os
import signal
import time
from functools import cache

import numpy as np
import pytest
from conftest import BUNNY
from plyfile import PlyData

import meshrender.bvh as bvh_module
from meshrender.bvh import (
    BVH,
    INTERSECT_COST,
    LEAF_TRIS_MAX,
    SAMPLE_TRIS,
    TRAVERSAL_COST,
    build_bvh,
    intersect_closest,
    sah_cost,
)

REL_TOL = 1e-9  # t from the BVH walk vs brute force: one formula, two float64 codings, rounding apart


# ---------------------------------------------------------------- inputs


def random_soup(n: int, seed: int, size: float = 0.05, dtype=np.float64):
    rng = np.random.default_rng(seed)
    centers = rng.random((n, 3))
    return tuple((centers + size * rng.standard_normal((n, 3))).astype(dtype) for _ in range(3))


@cache
def bunny():
    ply = PlyData.read(str(BUNNY))
    verts = np.stack([ply["vertex"][k] for k in "xyz"], axis=1).astype(np.float32)
    faces = np.vstack(ply["face"]["vertex_indices"]).astype(np.int64)
    return verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]


@cache
def bunny_bvh() -> BVH:
    return build_bvh(*bunny())


def rays_at(lo, hi, n: int, seed: int):
    """Rays from a sphere around the box [lo, hi] toward random points inside it; a tenth of them
    axis-aligned (direction components exactly 0), some starting inside the box."""
    rng = np.random.default_rng(seed)
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    center, radius = (lo + hi) / 2, np.linalg.norm(hi - lo)
    dirs = rng.standard_normal((n, 3))
    origins = center + radius * dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    targets = lo + (hi - lo) * rng.random((n, 3))
    origins[: n // 5] = lo + (hi - lo) * rng.random((n // 5, 3))  # inside the box
    directions = targets - origins
    k = n // 10
    axis = rng.integers(0, 3, k)
    directions[-k:] = 0
    directions[np.arange(n - k, n), axis] = rng.choice([-1.0, 1.0], k)
    origins[-k:] = targets[-k:] - directions[-k:] * radius
    return origins, directions


# ---------------------------------------------------------------- independent checks


def brute_force(v0, v1, v2, origins, directions, t_max=np.inf, also=None):
    """Closest two-sided Möller–Trumbore hit over all triangles: (t, index), (inf, -1) for a miss; and
    the t (or inf) at which each ray hits triangle also[r], where given and >= 0."""
    a = np.asarray(v0, np.float64)
    e1 = np.asarray(v1, np.float64) - a
    e2 = np.asarray(v2, np.float64) - a
    n = len(origins)
    t_max = np.broadcast_to(np.asarray(t_max, np.float64), (n,))
    best_t, best_i, t_also = np.full(n, np.inf), np.full(n, -1), np.full(n, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        for r, (o, d) in enumerate(zip(origins, directions, strict=True)):
            p = np.cross(d, e2)
            det = np.sum(e1 * p, axis=1)
            s = o - a
            q = np.cross(s, e1)
            u = np.sum(s * p, axis=1) / det
            v = np.sum(q * d, axis=1) / det
            t = np.sum(e2 * q, axis=1) / det
            ok = (det != 0) & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0) & (t < t_max[r])
            t = np.where(ok, t, np.inf)
            i = int(np.argmin(t))
            if np.isfinite(t[i]):
                best_t[r], best_i[r] = t[i], i
            if also is not None and also[r] >= 0:
                t_also[r] = t[also[r]]
    return best_t, best_i, t_also


def assert_same_hits(bvh, v0, v1, v2, origins, directions, t_max=np.inf):
    t, tri = intersect_closest(bvh, v0, v1, v2, origins, directions, t_max)
    bt, btri, bt_of_tri = brute_force(v0, v1, v2, origins, directions, t_max, also=tri)
    assert t.dtype == np.float64 and tri.dtype == np.int64
    np.testing.assert_array_equal(tri < 0, btri < 0, err_msg="hit / miss differs from brute force")
    np.testing.assert_array_equal(np.isinf(t), tri < 0)
    hit = btri >= 0
    np.testing.assert_allclose(t[hit], bt[hit], rtol=REL_TOL, atol=0)
    # A different triangle only for an exact tie: brute force hits the BVH's triangle at the same t.
    np.testing.assert_allclose(bt_of_tri[hit], bt[hit], rtol=REL_TOL, atol=0)
    return t, tri


def f32_floor_ok(b32, exact):
    """b32 is the largest float32 <= exact (conservative and tight)."""
    b = b32.astype(np.float64)
    with np.errstate(over="ignore"):
        up = np.nextafter(b32, np.float32(np.inf)).astype(np.float64)
    return (b <= exact) & (up > exact)


def f32_ceil_ok(b32, exact):
    b = b32.astype(np.float64)
    with np.errstate(over="ignore"):
        down = np.nextafter(b32, np.float32(-np.inf)).astype(np.float64)
    return (b >= exact) & (down < exact)


def check_structure(bvh: BVH, v0, v1, v2) -> dict:
    """Every invariant the kernel relies on; returns some tree statistics."""
    n_tris = len(v0)
    bounds, links, order = bvh.bounds, bvh.links, bvh.order
    assert bounds.dtype == np.float32 and links.dtype == np.int32 and order.dtype == np.int32
    n = len(links)
    assert bounds.shape == (n, 6) and links.shape == (n, 2) and order.shape == (n_tris,)
    assert 1 <= n <= 2 * n_tris - 1
    np.testing.assert_array_equal(np.sort(order), np.arange(n_tris))

    # Pre-order: a depth-first walk from the root, left (i + 1) before right, meets 0, 1, ..., N-1.
    is_leaf = links[:, 1] > 0
    seen, stack, depth, max_depth = [], [0], {0: 0}, 0
    while stack:
        i = stack.pop()
        seen.append(i)
        assert len(seen) <= n, "a node is reached twice"
        max_depth = max(max_depth, depth[i])
        if not is_leaf[i]:
            right = int(links[i, 0])
            assert links[i, 1] == 0
            assert i + 1 < right < n, f"node {i}: right child {right} not forward and inside"
            depth[right] = depth[i + 1] = depth[i] + 1
            stack += [right, i + 1]
    assert seen == list(range(n))

    # Leaves: 1..LEAF_TRIS_MAX triangles each, covering every position of `order` exactly once.
    first, count = links[is_leaf, 0].astype(np.int64), links[is_leaf, 1].astype(np.int64)
    assert np.all(count >= 1) and np.all(count <= LEAF_TRIS_MAX)
    assert np.all(first >= 0) and np.all(first + count <= n_tris)
    cover = np.zeros(n_tris + 1, np.int64)
    np.add.at(cover, first, 1)
    np.add.at(cover, first + count, -1)
    np.testing.assert_array_equal(np.cumsum(cover)[:-1], 1)

    # Each triangle lies in its leaf's box, which is the float32 rounding outward of the exact box.
    a, b, c = (np.asarray(v, np.float64)[order] for v in (v0, v1, v2))
    by_first = np.argsort(first, kind="stable")
    leaf_of_pos = np.repeat(np.flatnonzero(is_leaf)[by_first], count[by_first])
    lo, hi = np.minimum(np.minimum(a, b), c), np.maximum(np.maximum(a, b), c)
    box = bounds[leaf_of_pos].astype(np.float64)
    assert np.all(box[:, :3] <= lo) and np.all(box[:, 3:] >= hi)
    starts = first[by_first]
    leaf_ids = np.flatnonzero(is_leaf)[by_first]
    assert np.all(f32_floor_ok(bounds[leaf_ids, :3], np.minimum.reduceat(lo, starts, axis=0)))
    assert np.all(f32_ceil_ok(bounds[leaf_ids, 3:], np.maximum.reduceat(hi, starts, axis=0)))

    # Interior boxes are exactly the union of their children's (so every child lies inside its parent).
    inner = np.flatnonzero(~is_leaf)
    left, right = inner + 1, links[inner, 0]
    np.testing.assert_array_equal(bounds[inner, :3], np.minimum(bounds[left, :3], bounds[right, :3]))
    np.testing.assert_array_equal(bounds[inner, 3:], np.maximum(bounds[left, 3:], bounds[right, 3:]))
    assert np.all(bounds[:, :3] <= bounds[:, 3:])
    return {"nodes": n, "leaves": int(is_leaf.sum()), "depth": max_depth}


def leaf_triangles(bvh: BVH, node: int) -> set[int]:
    """Original indices of the triangles under a node (its subtree is nodes node .. end-1 in pre-order)."""
    links = bvh.links
    stack, out = [node], set()
    while stack:
        i = stack.pop()
        if links[i, 1] > 0:
            out |= set(bvh.order[links[i, 0] : links[i, 0] + links[i, 1]].tolist())
        else:
            stack += [int(links[i, 0]), i + 1]
    return out


# ---------------------------------------------------------------- structure


@pytest.mark.parametrize("n", [2, 3, 5, 17, 100, 3000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_random_soup_structure(n, dtype):
    soup = random_soup(n, seed=n, dtype=dtype)
    stats = check_structure(build_bvh(*soup), *soup)
    assert stats["leaves"] >= -(-n // LEAF_TRIS_MAX)


def test_bunny_structure():
    stats = check_structure(bunny_bvh(), *bunny())
    # A sane SAH tree over 69k triangles: not a list, not one giant leaf.
    assert stats["depth"] < 64
    assert stats["leaves"] > len(bunny()[0]) // LEAF_TRIS_MAX


def test_sah_separates_distant_clusters():
    a = random_soup(60, seed=1, size=0.02)
    b = tuple(x + 100.0 for x in random_soup(40, seed=2, size=0.02))
    soup = tuple(np.concatenate(p) for p in zip(a, b, strict=True))
    bvh = build_bvh(*soup)
    check_structure(bvh, *soup)
    assert bvh.links[0, 1] == 0
    assert leaf_triangles(bvh, 1) == set(range(60))
    assert leaf_triangles(bvh, int(bvh.links[0, 0])) == set(range(60, 100))


def test_small_node_becomes_leaf_only_when_sah_says_so():
    tri = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]])
    shifts = np.array([0.0, 1e-3, 2e-3, 3e-3, 4e-3])[:, None] * np.array([1.0, 0, 0])
    overlapping = tuple(tri[i] + shifts for i in range(3))
    four = build_bvh(*(v[:4] for v in overlapping))  # splitting cannot pay: one leaf
    assert four.links.tolist() == [[0, 4]]
    assert sah_cost(four) == pytest.approx(4 * INTERSECT_COST)
    five = build_bvh(*overlapping)  # over the limit: split even though SAH would rather not
    check_structure(five, *overlapping)
    assert five.links[0, 1] == 0
    apart = tuple(np.concatenate([v[:2], v[:2] + 50.0]) for v in overlapping)
    split = build_bvh(*apart)  # two far pairs: a split costs about one node visit
    check_structure(split, *apart)
    assert split.links[0, 1] == 0
    assert sah_cost(split) < 2 * INTERSECT_COST


def half_area(lo, hi):
    d = np.maximum(np.asarray(hi, np.float64) - lo, 0)
    return d[..., 0] * d[..., 1] + d[..., 1] * d[..., 2] + d[..., 2] * d[..., 0]


@pytest.mark.parametrize("n", [2, 3, 4])
def test_small_node_takes_the_cheapest_split(n):
    # For a node of at most LEAF_TRIS_MAX triangles every split into two sets is tried: the build's
    # choice (leaf, or which triangles go left) must be the cheapest by SAH, found here by brute force
    # over all of them, children counted as leaves. Near-ties are skipped (float32 vs float64 rounding).
    rng = np.random.default_rng(40 + n)
    checked = 0
    for _ in range(60):
        centers = rng.random((n, 1, 3)) * rng.choice([0.2, 1.0, 5.0])
        soup = tuple(centers[:, 0] + rng.standard_normal((n, 3)) * rng.choice([0.05, 0.5]) for _ in range(3))
        lo = np.minimum(np.minimum(soup[0], soup[1]), soup[2])
        hi = np.maximum(np.maximum(soup[0], soup[1]), soup[2])
        root = half_area(lo.min(0), hi.max(0))
        options = {(): INTERSECT_COST * n}  # the leaf
        for mask in range(1, 1 << (n - 1)):
            left = tuple(i for i in range(n) if mask >> i & 1)
            right = [i for i in range(n) if not mask >> i & 1]
            sides = [(len(s), half_area(lo[s].min(0), hi[s].max(0))) for s in (list(left), right)]
            options[left] = TRAVERSAL_COST + INTERSECT_COST * sum(k * a for k, a in sides) / root
        costs = sorted(options.values())
        if costs[1] - costs[0] < 1e-4 * costs[0]:
            continue
        want = min(options, key=options.get)
        bvh = build_bvh(*soup)
        check_structure(bvh, *soup)
        if want == ():
            assert bvh.links[0, 1] == n, "a split was cheaper than this leaf"
        else:
            assert bvh.links[0, 1] == 0
            got = leaf_triangles(bvh, 1)
            assert got in (set(want), set(range(n)) - set(want))
        checked += 1
    assert checked > 30


def test_sampled_top_levels_keep_the_tree_good():
    # Nodes of >= 2 * SAMPLE_TRIS triangles choose their split from a sample. The tree must stay about as
    # cheap as one that bins every triangle: within 1% SAH on a soup where the top 4 levels are sampled.
    soup = random_soup(32 * SAMPLE_TRIS, seed=41, size=0.01)
    sampled = build_bvh(*soup)
    check_structure(sampled, *soup)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bvh_module, "SAMPLE_TRIS", 10**9)
        full = build_bvh(*soup)
    assert sah_cost(sampled) < 1.01 * sah_cost(full)
    assert sampled.order.tobytes() != full.order.tobytes()  # the sample did steer the build


@pytest.mark.parametrize("depth_max", [10, 12])
def test_depth_stays_within_the_kernel_stack(depth_max):
    # The kernel's traversal stack is sized for DEPTH_MAX (meshrender.bvh_wide). Squeeze the budget on
    # a soup whose SAH tree is deeper (14; halving by count needs 10): the build must halve where it
    # runs short, and still find every hit. (The 1.1M-triangle bunny stays at 23 of the real 63.)
    soup = random_soup(3000, seed=42)
    assert check_structure(build_bvh(*soup), *soup)["depth"] > depth_max
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bvh_module, "DEPTH_MAX", depth_max)
        bvh = build_bvh(*soup)
    stats = check_structure(bvh, *soup)
    assert stats["depth"] <= depth_max
    origins, directions = rays_at([0, 0, 0], [1, 1, 1], 150, seed=43)
    assert_same_hits(bvh, *soup, origins, directions)


# ---------------------------------------------------------------- traversal against brute force


def test_reference_hits_known_triangle_both_sides():
    v0, v1, v2 = np.array([[0.0, 0, 2]]), np.array([[2.0, 0, 2]]), np.array([[0.0, 2, 2]])
    bvh = build_bvh(v0, v1, v2)
    origins = np.array([[0.5, 0.5, 0], [0.5, 0.5, 5], [1.5, 1.5, 0], [0.5, 0.5, 0], [0.5, 0.5, 3]])
    directions = np.array([[0, 0, 1.0], [0, 0, -2.0], [0, 0, 1.0], [0, 0, -1.0], [0, 0, 1.0]])
    t, tri = intersect_closest(bvh, v0, v1, v2, origins, directions)
    np.testing.assert_array_equal(tri, [0, 0, -1, -1, -1])
    np.testing.assert_array_equal(t, [2.0, 1.5, np.inf, np.inf, np.inf])
    t, tri = intersect_closest(bvh, v0, v1, v2, origins[:1], directions[:1], t_max=2.0)
    assert tri[0] == -1  # a hit needs t < t_max


@pytest.mark.parametrize("seed", [0, 1])
def test_random_soup_hits_match_brute_force(seed):
    soup = random_soup(2000, seed=seed)
    bvh = build_bvh(*soup)
    origins, directions = rays_at([0, 0, 0], [1, 1, 1], 300, seed=seed + 10)
    _, tri = assert_same_hits(bvh, *soup, origins, directions)
    assert 100 < np.count_nonzero(tri >= 0) < 300  # the rays probe both hits and misses


def test_t_max_limits_hits():
    soup = random_soup(500, seed=4)
    bvh = build_bvh(*soup)
    origins, directions = rays_at([0, 0, 0], [1, 1, 1], 200, seed=5)
    t_max = np.random.default_rng(6).random(200) * 1.5
    assert_same_hits(bvh, *soup, origins, directions, t_max)


def test_bunny_hits_match_brute_force():
    v0, v1, v2 = bunny()
    lo = np.minimum(np.minimum(v0, v1), v2).min(axis=0)
    hi = np.maximum(np.maximum(v0, v1), v2).max(axis=0)
    origins, directions = rays_at(lo, hi, 300, seed=7)
    _, tri = assert_same_hits(bunny_bvh(), v0, v1, v2, origins, directions)
    assert np.count_nonzero(tri >= 0) > 100


# ---------------------------------------------------------------- determinism and edge cases


def test_build_is_deterministic():
    for soup in (random_soup(3000, seed=8), bunny()):
        one, two = build_bvh(*soup), build_bvh(*soup)
        for name in ("bounds", "links", "order"):
            assert getattr(one, name).tobytes() == getattr(two, name).tobytes(), name
    soup32 = random_soup(3 * SAMPLE_TRIS, seed=9, dtype=np.float32)  # big enough to bin a sample at the top
    from32 = build_bvh(*soup32)
    from64 = build_bvh(*(v.astype(np.float64) for v in soup32))  # same values, wider type
    for name in ("bounds", "links", "order"):
        assert getattr(from32, name).tobytes() == getattr(from64, name).tobytes(), name


@pytest.mark.parametrize(
    ("knob", "values"),
    [("_BIN_ALL_SHARE", (0, 10**9)), ("_SCAN_CHUNK_ITEMS", (2**10, 2**40)), ("_PARALLEL_MIN", (0, 2**62))],
)
def test_speed_choices_leave_the_tree_alone(knob, values):
    # Whether a level bins its few small nodes along with the rest or gathers the rest out, how many
    # nodes a chunk of the SAH sweep holds (one, or all of a width), and whether a level's gathers and
    # elementwise passes are split with a helper thread (every one of them, or none) are choices of
    # speed alone: the tree comes out byte for byte the same.
    for soup in (random_soup(3000, seed=10), bunny()):
        built = []
        for value in values:
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(bvh_module, knob, value)
                mp.setattr(bvh_module, "_cores", lambda: 2)  # the split even on a machine of one core
                mp.setattr(bvh_module, "_helper", [])
                built.append(build_bvh(*soup))
                if knob == "_PARALLEL_MIN":
                    assert bool(bvh_module._helper) == (value == 0)  # the helper ran, or never started
        for name in ("bounds", "links", "order"):
            assert getattr(built[0], name).tobytes() == getattr(built[1], name).tobytes(), name
        if knob == "_SCAN_CHUNK_ITEMS":
            break  # chunks of one node are slow; the soup has nodes of every width


def test_a_forked_child_builds_with_its_own_helper():
    # The helper thread does not survive a fork; a child that found the parent's executor would
    # queue work no thread runs, and wait for it forever.
    soup = random_soup(3000, seed=12)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bvh_module, "_PARALLEL_MIN", 0)
        mp.setattr(bvh_module, "_cores", lambda: 2)
        want = build_bvh(*soup)
        assert bvh_module._helper  # the parent's helper exists
        pid = os.fork()
        if pid == 0:  # the child: build again, and say whether it matched
            code = 1
            try:
                signal.alarm(60)
                code = 0 if build_bvh(*soup).order.tobytes() == want.order.tobytes() else 2
            finally:
                os._exit(code)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child's build hung")
    assert os.waitstatus_to_exitcode(status) == 0


def test_single_triangle_is_a_root_leaf():
    v0, v1, v2 = np.array([[0.125, 0.25, 0.5]]), np.array([[1.0, 0.25, 0.5]]), np.array([[0.125, 1.0, -0.75]])
    bvh = build_bvh(v0, v1, v2)
    check_structure(bvh, v0, v1, v2)
    assert bvh.links.tolist() == [[0, 1]] and bvh.order.tolist() == [0]
    np.testing.assert_array_equal(bvh.bounds[0], np.float32([0.125, 0.25, -0.75, 1.0, 1.0, 0.5]))
    # 0.1 is no float32 and the nearest one is above it: the box edge must round down instead.
    assert float(np.float32(0.1)) > 0.1
    tenth = build_bvh(v0 - [[0.025, 0, 0]], v1, v2)
    assert tenth.bounds[0, 0] == np.nextafter(np.float32(0.1), np.float32(0))
    assert sah_cost(bvh) == INTERSECT_COST


def test_all_degenerate_triangles():
    rng = np.random.default_rng(11)
    points = rng.random((300, 3))
    # Segments along x, y or z (v2 - v0 = 2 (v1 - v0) exactly), and single points.
    step = np.zeros((300, 3))
    step[np.arange(300), rng.integers(0, 3, 300)] = 0.125
    step[200:] = 0
    soup = (points, points + step, points + 2 * step)
    bvh = build_bvh(*soup)
    check_structure(bvh, *soup)
    origins, directions = rays_at([0, 0, 0], [1, 1, 1], 100, seed=12)
    t, tri = assert_same_hits(bvh, *soup, origins, directions)
    assert np.all(tri == -1)


def test_identical_triangles_split_by_count():
    tri = [np.array([[0.0, 0, 0]]), np.array([[1.0, 0, 0]]), np.array([[0.0, 1, 0]])]
    soup = tuple(np.repeat(v, 100, axis=0) for v in tri)
    bvh = build_bvh(*soup)
    stats = check_structure(bvh, *soup)
    assert stats["depth"] <= 6  # halving by count, not peeling one triangle at a time
    assert np.all(bvh.bounds == np.float32([0, 0, 0, 1, 1, 0]))
    t, idx = intersect_closest(bvh, *soup, [[0.25, 0.25, 1.0]], [[0, 0, -1.0]])
    assert t[0] == 1.0 and 0 <= idx[0] < 100


def test_far_from_origin_bounds_round_outward():
    v0, v1, v2 = (1e6 + 100 * v for v in random_soup(2000, seed=13, size=0.01))
    assert not np.all(v0.astype(np.float32) == v0)  # so rounding to float32 actually matters
    bvh = build_bvh(v0, v1, v2)
    check_structure(bvh, v0, v1, v2)
    origins, directions = rays_at(np.full(3, 1e6), np.full(3, 1e6 + 100), 200, seed=14)
    _, tri = assert_same_hits(bvh, v0, v1, v2, origins, directions)
    assert np.count_nonzero(tri >= 0) > 20


def test_huge_coordinate_range():
    scale = np.repeat([1e-3, 1.0, 1e30, 1e300], 100)[:, None]
    soup = tuple(v * scale for v in random_soup(400, seed=15, size=0.1))
    bvh = build_bvh(*soup)
    check_structure(bvh, *soup)
    assert np.isinf(bvh.bounds[0, 3:]).all()  # beyond float32: the root box rounds out to infinity
    small = build_bvh(*(v[:100] for v in soup))
    check_structure(small, *(v[:100] for v in soup))


def test_median_fallback_sorts_in_float64():
    # 200 tiny triangles 1e-3 apart along x, in shuffled order, and one at 1e30. Normalised to the scene,
    # the tiny ones share one float32 centroid; they must still split at the float64 median along x,
    # so each leaf holds neighbours, not whatever came next in the input.
    x = np.random.default_rng(16).permutation(200) * 1e-3
    tiny = np.array([[0.0, 0, 0], [1e-4, 0, 0], [0.0, 1e-4, 0]])
    soup = [np.vstack([tiny[i] + x[:, None] * [1.0, 0, 0], tiny[i] + 1e30]) for i in range(3)]
    bvh = build_bvh(*soup)
    check_structure(bvh, *soup)
    spans = []
    for node in np.flatnonzero(bvh.links[:, 1] > 0):
        first, count = bvh.links[node]
        if np.all(bvh.order[first : first + count] < 200):
            spans.append(bvh.bounds[node, 3] - bvh.bounds[node, 0])
    assert len(spans) >= 200 // LEAF_TRIS_MAX
    assert max(spans) < LEAF_TRIS_MAX * 1e-3


def test_bad_input_is_refused():
    v = np.zeros((3, 3))
    with pytest.raises(ValueError):
        build_bvh(v[:0], v[:0], v[:0])
    with pytest.raises(ValueError):
        build_bvh(v, v, v[:2])
    with pytest.raises(ValueError):
        build_bvh(v[:, :2], v[:, :2], v[:, :2])
    bad = v.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError):
        build_bvh(v, bad, v)
