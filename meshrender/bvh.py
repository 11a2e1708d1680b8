"""Bounding volume hierarchy over triangles: a binned-SAH build on the host, flattened for the kernels.

How it works
  * The build goes breadth first and splits every node of one tree level at once. The triangles of
    the level's nodes sit in one compact array, grouped node by node. Centroids are binned per node
    and axis (BINS bins, fewer for small nodes); per-triangle keys into one (bin, xyz, node) table per
    bin count feed bincount / minimum.at / maximum.at, and the SAH sweep over split positions is a
    prefix and a suffix min/max down the bin axis. Python work is per level, never per node or
    triangle. A node whose centroids all coincide in float32 splits at the median by count instead.
  * A split is a stable partition done with cumulative sums: the left child's triangles come before
    the right child's. So every leaf becomes one contiguous range of the final triangle order, in
    depth-first order.
  * SAH decisions use float32 copies of the triangle boxes, normalised to the scene box. That is cheap,
    they only steer the splits, and any finite coordinate range fits. Node bounds are computed last from
    the float64 corners: leaves by reduceat over their ranges, interior nodes as the union of their
    children, each rounded outward to float32. So a float32 box always contains its triangles.
  * Then the breadth-first node table is renumbered into depth-first pre-order (left child at i + 1).
  * Deterministic: no randomness, ties go to the lowest axis and then the lowest bin, partitions are
    stable, and the only float work is elementwise IEEE arithmetic and min/max. The same input gives
    byte-identical arrays.

`intersect_closest` is a pure-numpy reference that walks the flattened arrays with a stack, as the
kernel does. Tests use it to check the layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LEAF_TRIS_MAX = 4  # the kernel loops over a leaf's triangles; 4 keeps that loop short and fetches contiguous
BINS = 32  # centroid bins per axis: SAH cost 0.4% under 16 bins on the bunny, same build time; uint8, <= 256
TRAVERSAL_COST = 1.0  # SAH cost of visiting an interior node: one box fetch and a slab test
INTERSECT_COST = 1.0  # SAH cost of one ray-triangle test; on a GPU about the same as a node visit
# Bins for smaller nodes: a node of n triangles gets the first width >= n (else BINS). More bins than
# triangles buy little, and the per-level bin tables cost nodes x bins.
_BIN_WIDTHS = tuple(w for w in (2, 4, 8, 16) if w < BINS) + (BINS,)
_GAMMA3 = 3 * np.finfo(np.float64).eps / (1 - 3 * np.finfo(np.float64).eps)  # error bound of 3 roundings
_BOX_TFAR_SCALE = 1 + 2 * _GAMMA3  # widen the slab test's far distance so rounding never drops a hit


@dataclass(frozen=True, eq=False)
class BVH:
    """The flattened tree. Node 0 is the root; nodes are in depth-first pre-order.

    bounds: float32 (N, 6): min x, y, z, then max x, y, z of each node. They contain the node's triangles
            (rounded outward from float64).
    links:  int32 (N, 2): an interior node has (index of its right child, 0), and its left child is at
            i + 1. A leaf has (first triangle, triangle count >= 1), indexing the reordered triangles.
    order:  int32 (T,): order[k] is the original index of the k-th triangle in leaf order.
    """

    bounds: np.ndarray
    links: np.ndarray
    order: np.ndarray

    @property
    def node_count(self) -> int:
        return int(self.links.shape[0])

    @property
    def leaf_count(self) -> int:
        return int(np.count_nonzero(self.links[:, 1]))


def _corners(v0, v1, v2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate and return the corners as float64 (T, 3)."""
    out = []
    for name, v in (("v0", v0), ("v1", v1), ("v2", v2)):
        a = np.asarray(v)
        if a.ndim != 2 or a.shape[1] != 3:
            raise ValueError(f"{name}: want shape (T, 3), got {a.shape}")
        if a.dtype.kind not in "fiu":
            raise ValueError(f"{name}: want a real-valued array, got {a.dtype}")
        out.append(np.ascontiguousarray(a, dtype=np.float64))
    if not out[0].shape == out[1].shape == out[2].shape:
        raise ValueError(f"v0, v1, v2 differ in shape: {out[0].shape}, {out[1].shape}, {out[2].shape}")
    if out[0].shape[0] < 1:
        raise ValueError("build_bvh needs at least one triangle")
    if 2 * out[0].shape[0] - 1 > np.iinfo(np.int32).max:
        raise ValueError(f"{out[0].shape[0]} triangles: their nodes would not fit int32 indices")
    for name, a in zip(("v0", "v1", "v2"), out, strict=True):
        if not np.isfinite(a).all():
            raise ValueError(f"{name}: coordinates must be finite")
    return out[0], out[1], out[2]


def _measure(d: np.ndarray, by_length: np.ndarray | bool) -> np.ndarray:
    """SAH size of boxes with extents d (x, y, z on the first axis, negative = empty): half the surface
    area, or where `by_length` is set (a node flat in two axes, so every area is 0) the edge-length sum."""
    d = np.maximum(d, 0)
    area = d[0] * d[1] + d[1] * d[2] + d[2] * d[0]
    if np.any(by_length):
        area = np.where(by_length, d[0] + d[1] + d[2], area)
    return area


def _exclusive_cumsum(x: np.ndarray) -> np.ndarray:
    out = np.zeros(len(x), dtype=np.int64)
    np.cumsum(x[:-1], out=out[1:])
    return out


def _scans(b: np.ndarray, op) -> tuple[np.ndarray, np.ndarray]:
    """Prefix and suffix reductions over the bins (first axis) of b, shape (w, ...): prefix[i] covers
    bins 0..i and suffix[i] covers bins i+1..w-1, for the w - 1 split positions. An explicit loop of
    whole-row operations is several times faster than ufunc.accumulate here."""
    w = b.shape[0]
    pre = np.empty((w - 1, *b.shape[1:]), dtype=b.dtype)
    suf = np.empty_like(pre)
    pre[0] = b[0]
    suf[w - 2] = b[w - 1]
    for i in range(1, w - 1):
        op(pre[i - 1], b[i], out=pre[i])
        op(suf[w - 1 - i], b[w - 1 - i], out=suf[w - 2 - i])
    return pre, suf


def _best_splits(cen, tlo, thi, seg, off, counts):
    """Binned SAH for every node of a level at once.

    cen, tlo, thi: float32 (3, m) centroids and boxes of the level's triangles, grouped by node.
    seg: node of each triangle; off, counts: each node's first position and size in those arrays.
    Returns (sah, axis, k, bins): the best split of each node puts bins < k of `axis` on the left and
    has SAH cost sah (inf where no split has triangles on both sides); bins is uint8 (3, m).

    A node gets the smallest width in _BIN_WIDTHS that is >= its triangle count (at most BINS). Nodes of
    one width share a table laid out (bin, xyz, node), so that scans over bins are whole-row operations.
    """
    nseg = len(counts)
    m = cen.shape[1]
    cmin = np.minimum.reduceat(cen, off, axis=1)
    ext = np.maximum.reduceat(cen, off, axis=1) - cmin
    ext[ext <= 0] = 1  # all centroids equal on this axis: all land in bin 0, so no split along it

    widths = np.array(_BIN_WIDTHS)
    cls = np.searchsorted(widths, np.minimum(counts, BINS))
    width = widths[cls]
    classes = [(int(w), np.flatnonzero(cls == i)) for i, w in enumerate(widths)]
    classes = [(w, s) for w, s in classes if len(s)]
    slot = np.empty(nseg, dtype=np.intp)  # position of the node in its class
    box_base = np.empty(nseg, dtype=np.intp)  # start of its class's (w, 3, n) box table
    cnt_base = np.empty(nseg, dtype=np.intp)  # start of its class's (w, n) count table
    stride = np.empty(nseg, dtype=np.intp)  # nodes in its class
    box_len = cnt_len = 0
    for w, s in classes:
        slot[s] = np.arange(len(s))
        stride[s] = len(s)
        box_base[s] = box_len
        cnt_base[s] = cnt_len
        box_len += w * 3 * len(s)
        cnt_len += w * len(s)
    w_t = width[seg]
    stride_t = stride[seg]
    box_t = box_base[seg] + slot[seg]
    cnt_t = cnt_base[seg] + slot[seg]
    w_f = w_t.astype(np.float32)

    bins = np.empty((3, m), dtype=np.uint8)
    flat = np.zeros(nseg, dtype=bool)
    node_size = np.zeros(nseg)
    sah = np.full(nseg, np.inf)
    best_axis = np.zeros(nseg, dtype=np.intp)
    best_k = np.ones(nseg, dtype=np.intp)
    costs = {w: np.empty((3, w - 1, len(s)), dtype=np.float32) for w, s in classes}
    for a in range(3):
        q = (cen[a] - cmin[a][seg]) / ext[a][seg]  # in [0, 1]
        b = (q * w_f).astype(np.intp)
        np.minimum(b, w_t - 1, out=b)
        bins[a] = b
        b *= stride_t
        cnt = np.bincount(cnt_t + b, minlength=cnt_len)
        key = box_t + 3 * b
        bmin = np.full(box_len, np.inf, dtype=np.float32)
        bmax = np.full(box_len, -np.inf, dtype=np.float32)
        for j in range(3):
            if j:
                key += stride_t
            np.minimum.at(bmin, key, tlo[j])
            np.maximum.at(bmax, key, thi[j])
        for w, s in classes:
            n = len(s)
            tab = slice(box_base[s[0]], box_base[s[0]] + w * 3 * n)
            lmin, rmin = _scans(bmin[tab].reshape(w, 3, n), np.minimum)
            lmax, rmax = _scans(bmax[tab].reshape(w, 3, n), np.maximum)
            if a == 0:  # the node's own box is the union of its bins
                d = np.maximum(lmax[-1], rmax[-1]) - np.minimum(lmin[-1], rmin[-1])
                flat[s] = _measure(d, False) == 0
                node_size[s] = _measure(d, flat[s])
            c = cnt[cnt_base[s[0]] : cnt_base[s[0]] + w * n].reshape(w, n)
            n_left, n_right = (x.astype(np.float32) for x in _scans(c, np.add))
            cost = costs[w][a]
            np.multiply(n_left, _measure((lmax - lmin).transpose(1, 0, 2), flat[s]), out=cost)
            cost += n_right * _measure((rmax - rmin).transpose(1, 0, 2), flat[s])
            cost[(n_left == 0) | (n_right == 0)] = np.inf
    for w, s in classes:
        c = costs[w].reshape(3 * (w - 1), len(s))
        best = np.argmin(c, axis=0)  # first minimum: lowest axis, then lowest bin
        cost = c[best, np.arange(len(s))].astype(np.float64)
        sah[s] = np.where(np.isfinite(cost), TRAVERSAL_COST + INTERSECT_COST * cost / node_size[s], np.inf)
        best_axis[s] = best // (w - 1)
        best_k[s] = best % (w - 1) + 1
    return sah, best_axis, best_k, bins


def _lower_halves(cen64: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Median split by count, for nodes whose float32 centroids all coincide. cen64: float64 (k, 3)
    centroids of their triangles, grouped by node (seg ascending). Per node, order the triangles along
    the axis where the float64 centroids spread most (stable, so equal ones keep their order) and mark
    the lower half, n // 2 of n."""
    starts = np.flatnonzero(np.r_[True, seg[1:] != seg[:-1]])
    n = np.diff(np.r_[starts, len(seg)])
    spread = np.maximum.reduceat(cen64, starts, axis=0) - np.minimum.reduceat(cen64, starts, axis=0)
    axis = np.argmax(spread, axis=1)  # first maximum: the lowest axis on ties
    node = np.repeat(np.arange(len(starts)), n)
    key = cen64[np.arange(len(seg)), axis[node]]
    rank = np.empty(len(seg), dtype=np.int64)
    rank[np.lexsort((key, node))] = np.arange(len(seg))
    return rank - starts[node] < (n // 2)[node]


def build_bvh(v0: np.ndarray, v1: np.ndarray, v2: np.ndarray) -> BVH:
    """Build the BVH of triangles (v0[i], v1[i], v2[i]).

    v0, v1, v2: float32 or float64 (T, 3) corners, T >= 1, finite. Degenerate triangles are allowed.
    """
    a, b, c = _corners(v0, v1, v2)
    n_tris = a.shape[0]
    lo64 = np.minimum(np.minimum(a, b), c)
    hi64 = np.maximum(np.maximum(a, b), c)

    # SAH working set: float32 (3, T), normalised to [-1, 1] by the scene's largest half extent (one scale
    # for all axes, so areas keep their ratios). Halves first: no overflow for any finite input.
    scene_lo = lo64.min(axis=0)
    scene_hi = hi64.max(axis=0)
    center = 0.5 * scene_lo + 0.5 * scene_hi
    half = float(np.max(0.5 * scene_hi - 0.5 * scene_lo))
    half = half if half > 0 else 1.0

    def norm(x):
        return np.ascontiguousarray(((x - center) / half).astype(np.float32).T)

    tlo = norm(lo64)
    thi = norm(hi64)
    cen = norm(0.5 * lo64 + 0.5 * hi64)
    ids = np.arange(n_tris, dtype=np.int32)

    order = np.empty(n_tris, dtype=np.int32)
    # Node table in breadth-first numbering; each level's nodes are consecutive. Per level we keep
    # (first id, is_leaf, first triangle, count, left child id); the right child is left child + 1.
    levels: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    start = np.zeros(1, dtype=np.int64)  # first position in `order` of each node of the level
    counts = np.array([n_tris], dtype=np.int64)
    level_base = 0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        while len(counts):
            nseg = len(counts)
            m = cen.shape[1]
            off = _exclusive_cumsum(counts)
            seg = np.repeat(np.arange(nseg, dtype=np.intp), counts)
            local = np.arange(m, dtype=np.int64) - off[seg]

            if m > nseg:
                sah, axis, k, bins = _best_splits(cen, tlo, thi, seg, off, counts)
            else:  # every node holds one triangle
                sah = np.full(nseg, np.inf)
                axis = k = np.zeros(nseg, dtype=np.intp)
                bins = np.zeros((3, m), dtype=np.uint8)
            # Leaf when small enough and no split is cheaper; else split: by SAH when some split has
            # triangles on both sides, else (all float32 centroids equal) by count at the median.
            leaf = (counts <= LEAF_TRIS_MAX) & ~(sah < INTERSECT_COST * counts)
            middle = ~leaf & ~np.isfinite(sah)

            leaf_t = leaf[seg]
            order[start[seg[leaf_t]] + local[leaf_t]] = ids[leaf_t]

            split_t = ~leaf_t
            go_left = bins[axis[seg], np.arange(m)] < k[seg]
            mid_t = middle[seg]
            if middle.any():
                mid_ids = ids[mid_t]
                go_left[mid_t] = _lower_halves(0.5 * lo64[mid_ids] + 0.5 * hi64[mid_ids], seg[mid_t])
            go_left &= split_t
            go_right = split_t & ~go_left
            cl = np.cumsum(go_left) - go_left
            cr = np.cumsum(go_right) - go_right
            n_left = np.add.reduceat(go_left.astype(np.int64), off)
            n_right = counts - n_left

            split = np.flatnonzero(~leaf)
            if np.any(n_left[split] == 0) or np.any(n_right[split] == 0):
                raise AssertionError("bvh: a split left one side empty")
            child = np.full(nseg, -1, dtype=np.int64)
            child[split] = level_base + nseg + 2 * np.arange(len(split))
            levels.append((level_base, leaf, start, counts, child))
            level_base += nseg

            # Next level: children in parent order, left before right.
            new_counts = np.column_stack((n_left[split], n_right[split])).ravel()
            new_start = np.column_stack((start[split], start[split] + n_left[split])).ravel()
            new_off = _exclusive_cumsum(new_counts)
            # A triangle's new position: its child's offset plus its rank among the node's triangles
            # going the same way (cl, cr count those before it on the whole level).
            left_base = np.zeros(nseg, dtype=np.int64)
            right_base = np.zeros(nseg, dtype=np.int64)
            left_base[split] = new_off[0::2] - cl[off[split]]
            right_base[split] = new_off[1::2] - cr[off[split]]
            seg_s = seg[split_t]
            dest = np.where(go_left[split_t], left_base[seg_s] + cl[split_t], right_base[seg_s] + cr[split_t])
            src = np.empty(len(dest), dtype=np.intp)
            src[dest] = np.flatnonzero(split_t)
            cen = np.take(cen, src, axis=1)
            tlo = np.take(tlo, src, axis=1)
            thi = np.take(thi, src, axis=1)
            ids = ids[src]
            start, counts = new_start, new_counts

    return _flatten(levels, level_base, order, lo64, hi64)


def _round_down(x: np.ndarray) -> np.ndarray:
    f = x.astype(np.float32)
    low = f.astype(np.float64) > x
    f[low] = np.nextafter(f[low], np.float32(-np.inf))
    return f


def _round_up(x: np.ndarray) -> np.ndarray:
    f = x.astype(np.float32)
    high = f.astype(np.float64) < x
    f[high] = np.nextafter(f[high], np.float32(np.inf))
    return f


def _flatten(levels, n_nodes: int, order: np.ndarray, lo64: np.ndarray, hi64: np.ndarray) -> BVH:
    """Exact bounds (float64, then rounded outward) and the depth-first pre-order renumbering."""
    is_leaf = np.concatenate([lv[1] for lv in levels])
    first = np.concatenate([lv[2] for lv in levels])
    count = np.concatenate([lv[3] for lv in levels])
    left = np.concatenate([lv[4] for lv in levels])
    spans = [(lv[0], lv[0] + len(lv[1])) for lv in levels]

    # Leaves tile [0, T) of the leaf order; reduceat over their starts (ascending) gives their boxes.
    leaf_ids = np.flatnonzero(is_leaf)
    leaf_ids = leaf_ids[np.argsort(first[leaf_ids], kind="stable")]
    starts = first[leaf_ids]
    if starts[0] != 0 or np.any(starts[1:] != starts[:-1] + count[leaf_ids][:-1]):
        raise AssertionError("bvh: leaves do not tile the triangle order")
    lo = np.empty((n_nodes, 3))
    hi = np.empty((n_nodes, 3))
    lo[leaf_ids] = np.minimum.reduceat(lo64[order], starts, axis=0)
    hi[leaf_ids] = np.maximum.reduceat(hi64[order], starts, axis=0)
    size = np.ones(n_nodes, dtype=np.int64)  # nodes in each subtree
    for s, e in reversed(spans):
        inner = s + np.flatnonzero(~is_leaf[s:e])
        lc = left[inner]
        lo[inner] = np.minimum(lo[lc], lo[lc + 1])
        hi[inner] = np.maximum(hi[lc], hi[lc + 1])
        size[inner] = 1 + size[lc] + size[lc + 1]

    pre = np.zeros(n_nodes, dtype=np.int64)  # pre-order index of each breadth-first node
    for s, e in spans:
        inner = s + np.flatnonzero(~is_leaf[s:e])
        lc = left[inner]
        pre[lc] = pre[inner] + 1
        pre[lc + 1] = pre[inner] + 1 + size[lc]

    with np.errstate(over="ignore"):
        bounds = np.empty((n_nodes, 6), dtype=np.float32)
        bounds[pre, :3] = _round_down(lo)
        bounds[pre, 3:] = _round_up(hi)
    links = np.zeros((n_nodes, 2), dtype=np.int32)
    inner = np.flatnonzero(~is_leaf)
    links[pre[inner], 0] = pre[left[inner] + 1]
    links[pre[leaf_ids], 0] = first[leaf_ids]
    links[pre[leaf_ids], 1] = count[leaf_ids]
    for arr in (bounds, links, order):
        arr.setflags(write=False)
    return BVH(bounds=bounds, links=links, order=order)


def sah_cost(bvh: BVH) -> float:
    """SAH cost of the whole tree: the expected cost of a ray through the root box, in units where one
    triangle test costs INTERSECT_COST. Sum over nodes of (node size / root size) times TRAVERSAL_COST
    for interior nodes, or INTERSECT_COST * count for leaves. Size is half the surface area, or the
    sum of edge lengths when the root box has no area; when the root is a point, every node is too."""
    d = (bvh.bounds[:, 3:].astype(np.float64) - bvh.bounds[:, :3]).T
    size = _measure(d, False)
    if size[0] == 0:
        size = _measure(d, True)
    if size[0] == 0:
        size = np.ones_like(size)
    leaf = bvh.links[:, 1] > 0
    weight = np.where(leaf, INTERSECT_COST * bvh.links[:, 1], TRAVERSAL_COST)
    return float(np.dot(weight, size) / size[0])


def _moller_trumbore(o, d, a, e1, e2, t_max):
    """Two-sided Möller–Trumbore of one ray against triangles (a, a + e1, a + e2), all float64.
    Returns t per triangle, inf where there is no hit with 0 < t < t_max."""
    p = np.cross(d, e2)
    det = np.einsum("ij,ij->i", e1, p)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / det
        s = o - a
        u = np.einsum("ij,ij->i", s, p) * inv
        q = np.cross(s, e1)
        v = (q @ d) * inv
        t = np.einsum("ij,ij->i", e2, q) * inv
        hit = (det != 0) & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0) & (t < t_max)
    return np.where(hit, t, np.inf)


def _box_hit(box, o, d, inv, t_far) -> bool:
    """Slab test of one ray against one box (plain floats). Conservative: the far distance is widened
    by 2 * gamma(3), and an axis the ray is parallel to only checks the origin."""
    t_near = 0.0
    for ax in range(3):
        lo, hi = box[ax], box[ax + 3]
        if d[ax] == 0.0:
            if o[ax] < lo or o[ax] > hi:
                return False
            continue
        t0 = (lo - o[ax]) * inv[ax]
        t1 = (hi - o[ax]) * inv[ax]
        if t0 > t1:
            t0, t1 = t1, t0
        t_near = max(t_near, t0)
        t_far = min(t_far, t1 * _BOX_TFAR_SCALE)
        if t_near > t_far:
            return False
    return True


def intersect_closest(
    bvh: BVH, v0, v1, v2, origins, directions, t_max=np.inf
) -> tuple[np.ndarray, np.ndarray]:
    """Closest hit of each ray, found by walking the flattened BVH with a stack, as the kernel does.

    v0, v1, v2: the (T, 3) corners the BVH was built from, in original order. origins, directions: (R, 3).
    t_max: scalar or (R,). A hit needs 0 < t < t_max. Triangles are two-sided (Möller–Trumbore).
    Returns (t float64 (R,), inf for a miss; original triangle index int64 (R,), -1 for a miss).
    """
    a, b, c = _corners(v0, v1, v2)
    if a.shape[0] != bvh.order.shape[0]:
        raise ValueError(f"BVH holds {bvh.order.shape[0]} triangles, got {a.shape[0]}")
    order = bvh.order.astype(np.int64)
    a = a[order]
    e1 = b[order] - a
    e2 = c[order] - a
    origins = np.asarray(origins, dtype=np.float64).reshape(-1, 3)
    directions = np.asarray(directions, dtype=np.float64).reshape(-1, 3)
    n_rays = origins.shape[0]
    t_max = np.broadcast_to(np.asarray(t_max, dtype=np.float64), (n_rays,))
    boxes = bvh.bounds.astype(np.float64).tolist()
    links = bvh.links.tolist()

    t_out = np.full(n_rays, np.inf)
    tri_out = np.full(n_rays, -1, dtype=np.int64)
    for r in range(n_rays):
        o_arr, d_arr = origins[r], directions[r]
        o, d = o_arr.tolist(), d_arr.tolist()
        inv = [1.0 / x if x != 0.0 else 0.0 for x in d]
        best_t, best_k = float(t_max[r]), -1
        stack = [0]
        while stack:
            i = stack.pop()
            if not _box_hit(boxes[i], o, d, inv, best_t):
                continue
            x, count = links[i]
            if count == 0:  # interior: visit the left child (i + 1) first
                stack.append(x)
                stack.append(i + 1)
                continue
            t = _moller_trumbore(o_arr, d_arr, a[x : x + count], e1[x : x + count], e2[x : x + count], best_t)
            j = int(np.argmin(t))
            if t[j] < best_t:
                best_t, best_k = float(t[j]), x + j
        if best_k >= 0:
            t_out[r] = best_t
            tri_out[r] = order[best_k]
    return t_out, tri_out
