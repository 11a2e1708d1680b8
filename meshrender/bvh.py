"""Bounding volume hierarchy over triangles: a binned-SAH build on the host, flattened for the kernels.

How it works
  * The build goes breadth first and splits every node of one tree level at once. The triangles of
    the level's nodes sit in one compact array, grouped node by node: their boxes as float32 (6, m),
    normalised to the scene box (one scale for all axes, so areas keep their ratios; any finite range
    fits). Python work is per level, never per node or triangle.
  * A node of more than LEAF_TRIS_MAX triangles bins their centroids along x, y and z: n triangles get
    the first width in _BIN_WIDTHS >= n / 2 (at most BINS), as more bins buy nothing measurable and the
    per-level tables cost nodes x bins. The nodes of one width share a table of 18 rows (axis, then
    -lo and hi, then xyz) laid out (bin, node), its bin-to-bin stride padded off powers of two (which
    put a node's bins in one cache set); one key per triangle and axis feeds bincount and maximum.at
    for all six rows of that axis. The SAH sweep over split positions is a prefix and a suffix max down
    the bin axis, whole rows at a time, a cache-sized chunk of nodes after another; an extent is the sum
    of the -lo and hi rows. A node of 2..LEAF_TRIS_MAX triangles instead tries every split into two sets
    (at most 7), or stays a leaf.
  * A node of n >= 2 * SAMPLE_TRIS triangles bins only every (n // SAMPLE_TRIS)-th of them, and the
    split found is applied to all of them by the same float32 expression that binned the sample (so
    both sides stay non-empty). While every node of a level is that big (the top eight levels of the
    1.1M-triangle bunny), the level's triangles are only their ids: the sample's boxes and the chosen axis'
    centroids are gathered from the input-order array, and a level costs one partition pass.
  * A node whose binned centroids all coincide in float32 splits at the median by count instead
    (ordered along its widest axis in float64), and so does one whose subtree could otherwise grow past
    DEPTH_MAX: the tree never outgrows the kernel's traversal stack.
  * The next level lists the left children of all split nodes, then their right children, each in
    parent order, so the split is a stable partition of the whole level in two flatnonzero: the
    left-goers in their order, then the right-goers. A node also keeps the range of the final triangle
    order its triangles will fill (a left child's before its sibling's), so every leaf becomes one
    contiguous range. The level arrays live in buffers reused level after level (_Work), freed before
    the flattening allocates its own.
  * Node bounds are computed last from the exact corners, in their own type: leaves as the min / max of
    their (at most LEAF_TRIS_MAX consecutive) triangles, interior nodes as the union of their children,
    each rounded outward to float32 (a no-op for float32 corners). So a float32 box always contains its
    triangles. Then the breadth-first node table is renumbered into depth-first pre-order (left child
    at i + 1): filled in breadth-first order, where writes run in sequence, and moved a row at a time.
  * Two cores where there are two: the biggest gathers and elementwise passes of a level (the
    partition's row gathers, the bin keys, the go-left test) are split between the calling thread and
    one helper, as numpy drops the GIL inside them. Each half writes its own slice or rows, so the
    result is the same as in sequence; the scatters into bins hold the GIL and stay on one thread.
  * Deterministic: no randomness, no output shared by threads, ties go to the lowest bin and then the
    lowest axis (the lowest split mask for small nodes), partitions and sorts are stable, and the only
    float work is elementwise IEEE arithmetic and min/max (no sums whose order could vary, no fused
    multiply-adds). The same input gives byte-identical arrays on any machine, from float32 or float64
    corners alike.

`intersect_closest` is a pure-numpy reference that walks the flattened arrays with a stack, as the
kernel does. Tests use it to check the layout. `bench/bvh.py` measures the build and the tree.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np

LEAF_TRIS_MAX = 4  # the kernel loops over a leaf's triangles; 4 keeps that loop short and fetches contiguous
BINS = 32  # centroid bins per axis: SAH cost 0.4% under 16 bins on the bunny, same build time
TRAVERSAL_COST = 1.0  # SAH cost of visiting an interior node: one box fetch and a slab test
INTERSECT_COST = 1.0  # SAH cost of one ray-triangle test; on a GPU about the same as a node visit
# A node of n >= 2 * SAMPLE_TRIS triangles bins a sample of every (n // SAMPLE_TRIS)-th. On the 1.1M-triangle
# bunny: SAH cost 0.3% over binning them all (1.1% at 512, 0.2% at 2048) for a build a third shorter.
SAMPLE_TRIS = 1024
DEPTH_MAX = 63  # deepest leaf (the root is 0): meshrender.bvh_wide sizes the kernel's traversal stack for it
# A level whose unbinned nodes (<= LEAF_TRIS_MAX triangles) hold under 1 / _BIN_ALL_SHARE of its triangles
# bins them along with the rest rather than gathering the rest out: nine gathers cost about what binning
# an eighth more triangles does.
_BIN_ALL_SHARE = 8
# Items of a chunk's prefix (or suffix) scan in _best_splits: 2**20 floats (4 MiB) keep it and its extents
# in cache; much smaller chunks pay numpy's per-call cost on too few nodes.
_SCAN_CHUNK_ITEMS = 2**20
# Triangles whose nodes _best_splits bins at once: its bin tables take about 100 bytes a triangle
# (76 MB for a whole level of the 1.1M-triangle bunny, the build's biggest single allocation).
_SPLITS_CHUNK_TRIS = 2**18
# Arrays shorter than this do their work on one thread: handing half of it to the helper costs more.
_PARALLEL_MIN = 2**17
_BIN_WIDTHS = tuple(w for w in (2, 4, 8, 16) if w < BINS) + (BINS,)
_EXT_MIN = 2.0**-100  # a centroid spread below this (normalised) counts as none; keeps bins/extent finite
_GAMMA3 = 3 * np.finfo(np.float64).eps / (1 - 3 * np.finfo(np.float64).eps)  # error bound of 3 roundings
_BOX_TFAR_SCALE = 1 + 2 * _GAMMA3  # widen the slab test's far distance so rounding never drops a hit


@dataclass(frozen=True, eq=False)
class BVH:
    """The flattened tree. Node 0 is the root; nodes are in depth-first pre-order.

    bounds: float32 (N, 6): min x, y, z, then max x, y, z of each node. They contain the node's triangles
            (rounded outward from the exact corners).
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


def _check_corners(v0, v1, v2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate the corners; return them as float32 or float64 (T, 3) arrays, not copied when already so."""
    out = []
    for name, v in (("v0", v0), ("v1", v1), ("v2", v2)):
        a = np.asarray(v)
        if a.ndim != 2 or a.shape[1] != 3:
            raise ValueError(f"{name}: want shape (T, 3), got {a.shape}")
        if a.dtype.kind not in "fiu":
            raise ValueError(f"{name}: want a real-valued array, got {a.dtype}")
        out.append(a if a.dtype in (np.float32, np.float64) else a.astype(np.float64))
    if not out[0].shape == out[1].shape == out[2].shape:
        raise ValueError(f"v0, v1, v2 differ in shape: {out[0].shape}, {out[1].shape}, {out[2].shape}")
    if out[0].shape[0] < 1:
        raise ValueError("build_bvh needs at least one triangle")
    if 2 * out[0].shape[0] - 1 > np.iinfo(np.int32).max:
        raise ValueError(f"{out[0].shape[0]} triangles: their nodes would not fit int32 indices")
    if len({a.dtype for a in out}) > 1:
        out = [a.astype(np.float64) for a in out]
    return out[0], out[1], out[2]


def _corners(v0, v1, v2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate and return the corners as float64 (T, 3)."""
    out = [np.ascontiguousarray(a, dtype=np.float64) for a in _check_corners(v0, v1, v2)]
    _check_finite(out)
    return out[0], out[1], out[2]


def _check_finite(corners) -> None:
    for name, a in zip(("v0", "v1", "v2"), corners, strict=True):
        if not np.isfinite(a).all():
            raise ValueError(f"{name}: coordinates must be finite")


def _measure(d: np.ndarray, by_length: np.ndarray | bool) -> np.ndarray:
    """SAH size of boxes with extents d (x, y, z on the first axis, negative = empty): half the surface
    area, or where `by_length` is set (a node flat in two axes, so every area is 0) the edge-length sum."""
    d = np.maximum(d, 0)
    area = d[0] * d[1] + d[1] * d[2] + d[2] * d[0]
    if np.any(by_length):
        area = np.where(by_length, d[0] + d[1] + d[2], area)
    return area


def _area(d: np.ndarray, by_length: np.ndarray) -> np.ndarray:
    """_measure for extents d shaped (..., xyz, node), where negative extents belong to sides that hold
    no triangles (the caller masks those costs)."""
    x, y, z = d[..., 0, :], d[..., 1, :], d[..., 2, :]
    out = x + y
    out *= z
    out += x * y
    if by_length.any():
        out = np.where(by_length, x + y + z, out)
    return out


def _exclusive_cumsum(x: np.ndarray) -> np.ndarray:
    out = np.zeros(len(x), dtype=np.int64)
    np.cumsum(x[:-1], out=out[1:])
    return out


_helper: list[ThreadPoolExecutor] = []  # one worker, made on first use
if hasattr(os, "register_at_fork"):  # a forked child has no helper thread: it makes its own
    os.register_at_fork(after_in_child=lambda: _helper.clear())


def _cores() -> int:
    """The cores this process may run on (all of the machine's where the OS cannot say)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on macOS or Windows
        return os.cpu_count() or 1


def _in_two(m: int, here, there) -> None:
    """Run there() on the helper thread while here() runs on this one, when there are two cores and
    m (the length of the arrays they work on) makes it pay; else both here, there() first. The two must
    write disjoint arrays (they then give what they give in sequence)."""
    if m < _PARALLEL_MIN or _cores() < 2:
        there()
        here()
        return
    if not _helper:
        _helper.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="bvh-build"))
    done = _helper[0].submit(there)
    try:
        here()
    finally:
        done.result()


def _scans(b: np.ndarray, op, side: str = "both", out: np.ndarray | None = None):
    """Prefix and suffix reductions over the bins (first axis) of b, shape (w, ...): prefix[i] covers
    bins 0..i and suffix[i] covers bins i+1..w-1, for the w - 1 split positions. side "prefix" or
    "suffix" returns that one alone, in `out` where given (shape (w - 1, ...)). An explicit loop of
    whole-row operations is several times faster than ufunc.accumulate here. Without `out`, may return
    views of b."""
    w = b.shape[0]
    if side == "both":
        return _scans(b, op, "prefix"), _scans(b, op, "suffix")
    if out is None:
        if w == 2:
            return b[:1] if side == "prefix" else b[1:]
        out = np.empty((w - 1, *b.shape[1:]), dtype=b.dtype)
    if side == "prefix":
        out[0] = b[0]
        for i in range(1, w - 1):
            op(out[i - 1], b[i], out=out[i])
    else:
        out[w - 2] = b[w - 1]
        for i in range(w - 2, 0, -1):
            op(out[i], b[i], out=out[i - 1])
    return out


def _node_min_max(x: np.ndarray, off: np.ndarray, seg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-node min and max of each row of x (k, m), nodes contiguous from `off`. reduceat for a few
    long nodes; ufunc.at for many short ones, where reduceat pays per segment."""
    if len(off) * 16 < x.shape[1]:
        return np.minimum.reduceat(x, off, axis=1), np.maximum.reduceat(x, off, axis=1)
    lo = np.full((x.shape[0], len(off)), np.inf, dtype=x.dtype)
    hi = np.full((x.shape[0], len(off)), -np.inf, dtype=x.dtype)
    for r in range(x.shape[0]):
        np.minimum.at(lo[r], seg, x[r])
        np.maximum.at(hi[r], seg, x[r])
    return lo, hi


def _bin_keys(axes, at, keys, q) -> None:
    """keys[a] for a in axes: each triangle's slot in the bin tables of axis a (its bin times the
    table's stride, plus its node's slot). at = (csum, cmin, scale, seg, stride, base); q: a float32
    buffer as long as the keys."""
    csum, cmin, scale, seg, stride, base = at
    for a in axes:
        np.subtract(csum[a], cmin[a][seg], out=q)  # >= 0: cmin is their minimum
        q *= scale[a][seg]
        key = keys[a]
        key[...] = q  # truncation is floor here
        key *= stride
        key += base


def _best_splits(csum, lo, hi, off, counts, work: _Work, seg=None):
    """_level_splits for the nodes of a level, a run of consecutive nodes of at most about
    _SPLITS_CHUNK_TRIS triangles at a time (a node's triangles are consecutive, so a run's are
    too): the bin tables are made per run, so they stay a run's size. Each node's split depends on
    its own triangles alone: the same result as all at once."""
    m = csum.shape[1]
    if m <= _SPLITS_CHUNK_TRIS:
        return _level_splits(csum, lo, hi, off, counts, work, seg)
    ends = off + counts
    parts = []
    j0 = 0
    while j0 < len(counts):
        j1 = max(j0 + 1, int(np.searchsorted(ends, off[j0] + _SPLITS_CHUNK_TRIS, side="right")))
        a, b = int(off[j0]), int(ends[j1 - 1])
        part_seg = None if seg is None else seg[a:b] - j0
        parts.append(_level_splits(csum[:, a:b], lo[:, a:b], hi[:, a:b], off[j0:j1] - a, counts[j0:j1], work,
                                   part_seg))  # fmt: skip
        j0 = j1
    return tuple(np.concatenate(x, axis=-1) for x in zip(*parts, strict=True))


def _level_splits(csum, lo, hi, off, counts, work: _Work, seg=None):
    """Binned SAH for every node of a level (or of a run of its nodes) at once.

    csum, lo, hi: float32 (3, m): centroid sums (lo + hi) and boxes of the binned triangles, grouped by
    node; off, counts: each node's first position and size in them (counts >= 1; a node of one
    triangle gets sah inf); seg, if given: the node of each triangle.
    Returns (sah, axis, k, cmin, scale): the best split of node j puts a triangle on the left when
    (csum[axis] - cmin[axis, j]) * scale[axis, j] < k, and has SAH cost sah (inf where no split has
    triangles on both sides). cmin, scale: float32 (3, nseg).
    """
    nseg = len(counts)
    m = csum.shape[1]
    if seg is None:
        seg = np.repeat(np.arange(nseg, dtype=np.intp), counts)
    cmin, cmax = _node_min_max(csum, off, seg)
    ext = cmax - cmin
    ext[~(ext >= _EXT_MIN)] = 1  # all centroids (about) equal on this axis: all land in bin 0, no split

    widths = np.array(_BIN_WIDTHS)
    cls = np.searchsorted(widths, np.minimum(-(-counts // 2), BINS))
    width = widths[cls]
    # Slightly under width / ext, so that (csum - cmin) * scale < width in float32: no clamp needed.
    scale = ((width * (1 - 2.0**-20)).astype(np.float32) / ext).astype(np.float32)
    classes = [(int(w), np.flatnonzero(cls == i)) for i, w in enumerate(widths)]
    classes = [(w, s) for w, s in classes if len(s)]
    # Nodes of one width share a table laid out (bin, node); the count table is one such, the box
    # tables nine (axis, xyz) rows of them. A triangle's key is the same in all ten, so each
    # minimum.at / maximum.at reads one key array, and scans over bins are whole-row operations.
    base = np.empty(nseg, dtype=np.intp)  # the node's slot in its class's table
    stride = np.empty(nseg, dtype=np.intp)  # bin to bin in its class's table: its nodes, padded
    class_at = []  # (first slot, stride) of each class
    clen = 0
    for w, s in classes:
        # The stride is an odd multiple of 16 items: a power of two (2**depth nodes, as the top levels
        # have) put all bins of a node in one cache set and made the scatters below several times slower.
        pitch = (len(s) + 15) // 32 * 32 + 16
        base[s] = clen + np.arange(len(s))
        stride[s] = pitch
        class_at.append((clen, pitch))
        clen += w * pitch
    if len(classes) == 1:  # one width (most levels): the node's slot is its index, the stride one number
        stride_t, base_t = int(stride[0]), seg
    else:
        stride_t = np.take(stride, seg, out=work.i[0][:m])
        base_t = np.take(base, seg, out=work.i[1][:m])
    keys = [work.i[2 + a][:m] for a in range(3)]
    at = (csum, cmin, scale, seg, stride_t, base_t)
    _in_two(m, partial(_bin_keys, (0, 1), at, keys, work.f[0][:m]),
            partial(_bin_keys, (2,), at, keys, work.f[1][:m]))  # fmt: skip
    neg_lo = np.negative(lo, out=work.neg[:, :m])
    # Box table rows (axis, side, xyz), side 0 holding max(-lo) = -min(lo) and side 1 max(hi): one
    # maximum down the bins serves both sides, and an extent is the sum of the two (exactly hi - lo).
    table = work.table(18 * clen).reshape(18, clen)
    table.fill(-np.inf)
    cnts = []
    for a, key in enumerate(keys):
        cnts.append(np.bincount(key, minlength=clen))
        for j in range(3):
            np.maximum.at(table[6 * a + j], key, neg_lo[j])
            np.maximum.at(table[6 * a + 3 + j], key, hi[j])

    sah = np.full(nseg, np.inf)
    best_axis = np.zeros(nseg, dtype=np.intp)
    best_k = np.ones(nseg, dtype=np.intp)
    for (w, s), (c0, pitch) in zip(classes, class_at, strict=True):
        tab = table[:, c0 : c0 + w * pitch].reshape(18, w, pitch).transpose(1, 0, 2)  # bin, row, node
        cnt = [c[c0 : c0 + w * pitch].reshape(w, pitch) for c in cnts]
        # A chunk of nodes at a time, so that its scans, extents and areas stay in cache (the whole
        # class's pass 100 MiB at the deep levels, and went to memory and back once per step).
        chunk = max(1, _SCAN_CHUNK_ITEMS // (18 * (w - 1)))
        for j0 in range(0, len(s), chunk):
            j1 = min(j0 + chunk, len(s))
            n = j1 - j0
            bins = tab[:, :, j0:j1]
            full = bins[:, :6].max(axis=0)  # the node's box: all bins of one axis
            d = full[3:] + full[:3]
            flat = _measure(d, False) == 0
            node_size = _measure(d, flat)
            # One side at a time, in buffers reused for both: the scan, its extents, their areas
            # (w - 1, axis, node).
            scan = np.empty((w - 1, 18, n), dtype=np.float32)
            ext = np.empty((w - 1, 3, 3, n), dtype=np.float32)
            sides = []
            for side in ("prefix", "suffix"):
                _scans(bins, np.maximum, side, out=scan)
                halves = scan.reshape(w - 1, 3, 2, 3, n)
                np.add(halves[:, :, 1], halves[:, :, 0], out=ext)
                sides.append(_area(ext, flat))
            cost, right = sides
            empty = np.zeros(cost.shape, dtype=bool)
            for a in range(3):
                n_left, n_right = _scans(cnt[a][:, j0:j1], np.add)
                cost[:, a] *= n_left
                right[:, a] *= n_right
                empty[:, a] = (n_left == 0) | (n_right == 0)
            cost += right
            cost[empty] = np.inf
            cost = cost.reshape((w - 1) * 3, n)
            best = np.argmin(cost, axis=0)  # first minimum: lowest bin, then lowest axis
            bc = cost[best, np.arange(n)].astype(np.float64)
            at = s[j0:j1]
            sah[at] = np.where(np.isfinite(bc), TRAVERSAL_COST + INTERSECT_COST * bc / node_size, np.inf)
            best_axis[at] = best % 3
            best_k[at] = best // 3 + 1
    return sah, best_axis, best_k, cmin, scale


def _small_splits(box: np.ndarray, first: np.ndarray, n_tris: int) -> tuple[np.ndarray, np.ndarray]:
    """SAH over every split of nodes of n_tris (2..LEAF_TRIS_MAX) triangles into two non-empty sets,
    rather than bins: at most 7 to try, and binning this few leaves most of them out.

    box: float32 (6, m) boxes of the level; first: (n,) each node's first position in it.
    Returns (sah, mask): the best split's cost and which triangles go left (bit i: the node's i-th).
    The last triangle always goes right, so each split is tried once; ties go to the lowest mask."""
    n = len(first)
    at = (first + np.arange(n_tris)[:, None]).ravel()  # the nodes' i-th triangles, i = 0, 1, ...
    tri = np.empty((6, n_tris * n), dtype=box.dtype)
    for r in range(6):
        np.take(box[r], at, out=tri[r])
    tri = tri.reshape(6, n_tris, n).transpose(1, 0, 2)  # (triangle i, row, node)

    def union(members):  # box of some of the nodes' triangles: (lo, hi), each (3, n)
        lo, hi = members[0][:3], members[0][3:]
        for t in members[1:]:
            lo, hi = np.minimum(lo, t[:3]), np.maximum(hi, t[3:])
        return lo, hi

    node_lo, node_hi = union(tri)
    d = node_hi - node_lo
    flat = _measure(d, False) == 0
    node_size = _measure(d, flat)
    best = np.full(n, np.inf, dtype=np.float32)
    best_mask = np.zeros(n, dtype=np.int64)
    for mask in range(1, 1 << (n_tris - 1)):
        cost = np.zeros(n, dtype=np.float32)
        for side in (mask, ~mask):
            members = [tri[i] for i in range(n_tris) if side >> i & 1]
            lo, hi = union(members)
            cost += len(members) * _measure(hi - lo, flat)
        better = cost < best
        np.copyto(best, cost, where=better)
        np.copyto(best_mask, mask, where=better)
    sah = TRAVERSAL_COST + INTERSECT_COST * best.astype(np.float64) / node_size
    return sah, best_mask


def _sample(off: np.ndarray, counts: np.ndarray):
    """Positions to bin: all triangles of a node, or every s-th of a big one (s = n // SAMPLE_TRIS).
    Returns (positions, or None for all; their per-node offsets; their per-node counts)."""
    stride = np.maximum(counts // SAMPLE_TRIS, 1)
    if np.all(stride == 1):
        return None, off, counts
    n = -(-counts // stride)
    soff = _exclusive_cumsum(n)
    node = np.repeat(np.arange(len(counts)), n)
    pos = np.repeat(off, n) + (np.arange(int(n.sum())) - soff[node]) * stride[node]
    return pos, soff, n


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


class _Work:
    """Buffers for the per-triangle arrays, reused level after level (a level holds at most T triangles):
    fresh ones each level cost page faults, up to a fifth of the build. The box table of _best_splits
    grows with the levels and is kept too; all of them are gone before _flatten runs."""

    def __init__(self, n: int):
        self.box = np.empty((6, n), dtype=np.float32)
        self.box_next = np.empty((6, n), dtype=np.float32)
        self.csum = np.empty((3, n), dtype=np.float32)
        self.ids_next = np.empty(n, dtype=np.int32)
        self.f = [np.empty(n, dtype=np.float32) for _ in range(2)]
        self.i = [np.empty(n, dtype=np.intp) for _ in range(6)]
        self.t = [np.empty(n, dtype=bool) for _ in range(3)]
        self.arange = np.arange(n, dtype=np.intp)
        self.neg = np.empty((3, n), dtype=np.float32)
        self._table = np.empty(0, dtype=np.float32)

    def table(self, size: int) -> np.ndarray:
        """_best_splits' box table, grown as the levels deepen: past 32 MiB every fresh allocation is a
        fresh mapping whose pages fault in again, a few percent of the build."""
        if self._table.size < size:
            self._table = np.empty(size, dtype=np.float32)
        return self._table[:size]


def build_bvh(v0: np.ndarray, v1: np.ndarray, v2: np.ndarray) -> BVH:
    """Build the BVH of triangles (v0[i], v1[i], v2[i]).

    v0, v1, v2: float32 or float64 (T, 3) corners, T >= 1, finite. Degenerate triangles are allowed.
    """
    a, b, c = _check_corners(v0, v1, v2)
    lo = np.minimum(np.minimum(a, b), c)  # exact in the input's type
    hi = np.maximum(np.maximum(a, b), c)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):  # NaN and inf reach lo or hi
        _check_finite((a, b, c))

    # The level loop's buffers are gone by the time _flatten allocates its own: it reuses their memory.
    levels, n_nodes, order = _split_levels(lo, hi)
    return _flatten(levels, n_nodes, order, lo, hi)


def _split_levels(lo: np.ndarray, hi: np.ndarray):
    """The level loop: split every node of a level at once, level after level, until all are leaves.
    lo, hi: (T, 3) corner-wise min / max. Returns (levels, node count, order): per level the tuple the
    node table keeps (see below), and the leaf order of the triangles."""
    n_tris = lo.shape[0]
    # SAH working set: float32 (6, T), normalised to [-1, 1] by the scene's largest half extent. Computed
    # in float64 from the same values whatever the input type; halves first: no overflow for any finite input.
    scene_lo = np.array([lo[:, i].min() for i in range(3)], dtype=np.float64)  # per column: 20x faster
    scene_hi = np.array([hi[:, i].max() for i in range(3)], dtype=np.float64)
    center = 0.5 * scene_lo + 0.5 * scene_hi
    half = float(np.max(0.5 * scene_hi - 0.5 * scene_lo))
    half = half if half > 0 else 1.0
    work = _Work(n_tris)
    box0 = np.empty((6, n_tris), dtype=np.float32)  # in input order
    for r in range(3):  # per column: a (T, 3) temporary and a transposing copy cost 5x more
        box0[r] = (lo[:, r] - center[r]) / half
        box0[r + 3] = (hi[:, r] - center[r]) / half
    csum0 = box0[:3] + box0[3:]
    # While every node is sampled (the top levels), the level's triangles are only `ids`: the samples and
    # the chosen axis' centroids are gathered from box0. From the first level that bins whole nodes on,
    # the boxes travel with the triangles (`box`, permuted with them).
    box = None
    ids = np.arange(n_tris, dtype=np.int32)

    order = np.empty(n_tris, dtype=np.int32)
    # Node table in breadth-first numbering; each level's nodes are consecutive: the left children of the
    # previous level's split nodes in their order, then the right children. Per level we keep
    # (first id, is_leaf, first triangle, count, left child id, right child id).
    levels: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    start = np.zeros(1, dtype=np.int64)  # first position in `order` of each node of the level
    counts = np.array([n_tris], dtype=np.int64)
    level_base = 0
    depth = 0  # of this level's nodes
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        while len(counts):
            nseg = len(counts)
            m = len(ids)
            off = _exclusive_cumsum(counts)
            seg = np.repeat(np.arange(nseg, dtype=np.intp), counts)
            many = counts > LEAF_TRIS_MAX  # binned; smaller ones try every partition (_small_splits)
            whole = (counts > 1) & ((counts <= LEAF_TRIS_MAX) | (counts < 2 * SAMPLE_TRIS))  # not sampled
            if box is None and whole.any():
                box = work.box[:, :m]
                _in_two(m, partial(_take_rows, ids, box0[:3], box[:3]),
                        partial(_take_rows, ids, box0[3:], box[3:]))  # fmt: skip
                box0 = csum0 = None  # read only while the level is ids alone: 10% of the build's peak
            if box is not None:
                csum = work.csum[:, :m]
                np.add(box[:3], box[3:], out=csum)
            sah = np.full(nseg, np.inf)
            axis = np.zeros(nseg, dtype=np.intp)
            k = np.ones(nseg, dtype=np.intp)
            cmin = np.zeros((3, nseg), dtype=np.float32)
            scale = np.ones((3, nseg), dtype=np.float32)
            if many.any():
                nodes = np.flatnonzero(many)
                pos, s_off, s_counts = _sample(_exclusive_cumsum(counts[nodes]), counts[nodes])
                if pos is None and (m - int(counts[nodes].sum())) * _BIN_ALL_SHARE <= m:
                    # Few triangles in unbinned nodes: binning them too (results dropped) is cheaper than
                    # gathering the others out.
                    r = _best_splits(csum, box[:3], box[3:], off, counts, work, seg)
                    r = tuple(x[..., nodes] for x in r)
                else:
                    if len(nodes) < nseg:
                        pos_many = np.flatnonzero(many[seg])
                        pos = pos_many if pos is None else pos_many[pos]
                    src_box, at = (box0, ids[pos]) if box is None else (box, pos)
                    bs = work.box_next[:, : len(pos)]  # free until the partition below
                    _in_two(len(at), partial(_take_rows, at, src_box[:3], bs[:3]),
                            partial(_take_rows, at, src_box[3:], bs[3:]))  # fmt: skip
                    r = _best_splits(bs[:3] + bs[3:], bs[:3], bs[3:], s_off, s_counts, work)
                sah[nodes], axis[nodes], k[nodes], cmin[:, nodes], scale[:, nodes] = r
            small = []  # (first positions of nodes of n_small triangles, n_small, their left masks)
            for n_small in range(2, LEAF_TRIS_MAX + 1):
                nodes = np.flatnonzero(counts == n_small)
                if len(nodes):
                    sah[nodes], mask = _small_splits(box, off[nodes], n_small)
                    small.append((off[nodes], n_small, mask))
            # Leaf when small enough and no split is cheaper; else split: by SAH when some split has
            # triangles on both sides, else (all float32 centroids equal) by count at the median.
            leaf = (counts <= LEAF_TRIS_MAX) & ~((sah < INTERSECT_COST * counts) & (depth < DEPTH_MAX))
            # Depth budget: halving by count reaches <= LEAF_TRIS_MAX in `need` levels. A node that would
            # otherwise risk a leaf deeper than DEPTH_MAX (SAH peeling a few triangles a level, as a
            # hostile mesh can make it) splits at the median instead; real meshes never get near.
            need = np.ceil(np.log2(np.maximum((counts + LEAF_TRIS_MAX - 1) // LEAF_TRIS_MAX, 1)))
            middle = ~leaf & (~np.isfinite(sah) | (depth + need >= DEPTH_MAX))

            # Go left: the expression that binned the node's triangles, on the chosen axis, for all of them.
            nodes_all = np.arange(nseg)
            side = (seg, axis, cmin[axis, nodes_all], scale[axis, nodes_all], k.astype(np.float32))
            go_left = work.t[0][:m]
            src = (csum0, ids) if box is None else csum
            h = m // 2
            _in_two(m, partial(_goes_left, slice(0, h), side, src, work, go_left),
                    partial(_goes_left, slice(h, m), side, src, work, go_left))  # fmt: skip
            for first, n_small, mask in small:
                bit = np.arange(n_small)
                go_left[first[:, None] + bit] = (mask[:, None] >> bit) & 1
            if middle.any():
                mid_t = middle[seg]
                mid_ids = ids[mid_t]
                cen64 = 0.5 * lo[mid_ids].astype(np.float64) + 0.5 * hi[mid_ids].astype(np.float64)
                go_left[mid_t] = _lower_halves(cen64, seg[mid_t])
            any_leaf = bool(leaf.any())
            go_right = work.t[1][:m]
            if any_leaf:
                split_t = np.take(~leaf, seg, out=work.t[2][:m])
                go_left &= split_t
                np.greater(split_t, go_left, out=go_right)
            else:
                np.logical_not(go_left, out=go_right)
            cl = np.cumsum(go_left, dtype=np.intp, out=work.i[1][:m])  # left-goers up to and including each
            n_left = np.diff(np.r_[0, cl[off[1:] - 1], cl[-1]])
            split = np.flatnonzero(~leaf)
            n_right = counts - n_left  # of the split nodes: a leaf's triangles go neither way
            if np.any(n_left[split] == 0) or np.any(n_right[split] == 0):
                raise AssertionError("bvh: a split left one side empty")
            left_child = np.full(nseg, -1, dtype=np.int64)
            right_child = np.full(nseg, -1, dtype=np.int64)
            left_child[split] = level_base + nseg + np.arange(len(split))
            right_child[split] = left_child[split] + len(split)
            levels.append((level_base, leaf, start, counts, left_child, right_child))
            level_base += nseg

            # Next level: all left children, then all right children, each in parent order. So its
            # triangles are the left-goers in their order, then the right-goers: a stable partition
            # that two flatnonzero make. A leaf's triangles go neither way and are written out.
            new_counts = np.concatenate((n_left[split], n_right[split]))
            new_start = np.concatenate((start[split], start[split] + n_left[split]))
            m_new = int(new_counts.sum())
            src = np.concatenate((np.flatnonzero(go_left), np.flatnonzero(go_right)), out=work.i[5][:m_new])
            if any_leaf:
                leaves = np.flatnonzero(leaf)
                lc = counts[leaves]
                leaf_first = np.repeat(start[leaves] - _exclusive_cumsum(lc), lc)
                order[leaf_first + work.arange[: m - m_new]] = ids[np.flatnonzero(~split_t)]
            ids_next = work.ids_next[:m_new]
            if box is not None:
                box_next = work.box_next[:, :m_new]

                _in_two(m_new, partial(_take_rows, src, box[:3], box_next[:3]),
                        partial(_take_rows, src, (*box[3:], ids), (*box_next[3:], ids_next)))  # fmt: skip
                box = box_next
                work.box, work.box_next = work.box_next, work.box
            else:
                np.take(ids, src, out=ids_next)
            work.ids_next = ids.base if ids.base is not None else ids
            ids = ids_next
            start, counts = new_start, new_counts
            depth += 1

    return levels, level_base, order


def _goes_left(sl: slice, side, src, work: _Work, out: np.ndarray) -> None:
    """out[sl]: whether each triangle of the level in slice sl goes left, by the expression that binned
    it on its node's chosen axis. side = (seg, axis, cmin, scale, k): each triangle's node, and per node
    the axis and its bin origin, scale and split bin; src: the level's centroid sums (3, m), or
    (csum0, ids) when the level holds only ids (the sums then come from the input-order csum0)."""
    seg, axis, cmin, scale, k = side
    s_t = seg[sl]
    ax_t = np.take(axis, s_t, out=work.i[0][sl])
    cx = work.f[1][sl]
    if isinstance(src, tuple):
        csum0, ids = src
        ax_t *= csum0.shape[1]
        ax_t += ids[sl]
        np.take(csum0.reshape(-1), ax_t, out=cx)
    else:
        np.copyto(cx, src[0, sl])
        np.copyto(cx, src[1, sl], where=ax_t == 1)
        np.copyto(cx, src[2, sl], where=ax_t == 2)
    cx -= cmin[s_t]
    cx *= scale[s_t]
    np.less(cx, k[s_t], out=out[sl])


def _take_rows(idx: np.ndarray, rows, out) -> None:
    for row, dst in zip(rows, out, strict=True):
        np.take(row, idx, out=dst)


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


def _flatten(levels, n_nodes: int, order: np.ndarray, tri_lo: np.ndarray, tri_hi: np.ndarray) -> BVH:
    """Exact bounds (in the corners' type, then rounded outward to float32) and the depth-first
    pre-order renumbering. tri_lo, tri_hi: (T, 3) corner-wise min / max, in original order. Works on
    one coordinate at a time: numpy's 1-D gathers are several times faster than fancy row indexing."""
    is_leaf = np.concatenate([lv[1] for lv in levels])
    first = np.concatenate([lv[2] for lv in levels])
    count = np.concatenate([lv[3] for lv in levels])
    left = np.concatenate([lv[4] for lv in levels])
    right = np.concatenate([lv[5] for lv in levels])
    spans = [(lv[0], lv[0] + len(lv[1])) for lv in levels]

    # Leaves tile [0, T) of the leaf order, each 1..LEAF_TRIS_MAX consecutive triangles: a leaf's box is
    # the min / max over rows start .. start + count - 1 (the last one repeated for shorter leaves).
    leaf_ids = np.flatnonzero(is_leaf)
    by_start = np.full(len(order), -1, dtype=np.int64)  # leaves in order of their first triangle
    by_start[first[leaf_ids]] = leaf_ids
    n_leaves = len(leaf_ids)
    leaf_ids = by_start[by_start >= 0]
    starts = first[leaf_ids]
    last = count[leaf_ids] - 1
    tiled = len(leaf_ids) == n_leaves and starts[0] == 0 and np.all(starts[1:] == starts[:-1] + last[:-1] + 1)
    if not tiled or np.any(last >= LEAF_TRIS_MAX):
        raise AssertionError("bvh: leaves do not tile the triangle order")
    rows = [starts + np.minimum(last, i) for i in range(LEAF_TRIS_MAX)]
    # Per coordinate row (min x, y, z, max x, y, z), exact: min / max of the corners' own values.
    box = [np.empty(n_nodes, dtype=tri_lo.dtype) for _ in range(6)]
    # In leaf order: one 1-D gather of whole rows, each row seen as one item.
    item = np.dtype((np.void, 3 * tri_lo.dtype.itemsize))
    tri_lo, tri_hi = (
        np.take(np.ascontiguousarray(a).view(item).reshape(-1), order).view(a.dtype).reshape(-1, 3)
        for a in (tri_lo, tri_hi)
    )
    for r in range(6):
        x = tri_lo[:, r] if r < 3 else tri_hi[:, r - 3]
        op = np.minimum if r < 3 else np.maximum
        leaf_box = x[rows[0]]
        for row in rows[1:]:
            op(leaf_box, x[row], out=leaf_box)
        box[r][leaf_ids] = leaf_box
    size = np.ones(n_nodes, dtype=np.int64)  # nodes in each subtree
    for s, e in reversed(spans):
        inner = s + np.flatnonzero(~is_leaf[s:e])
        lc, rc = left[inner], right[inner]
        for r in range(6):
            op = np.minimum if r < 3 else np.maximum
            box[r][inner] = op(box[r][lc], box[r][rc])
        size[inner] = 1 + size[lc] + size[rc]

    pre = np.zeros(n_nodes, dtype=np.int64)  # pre-order index of each breadth-first node
    for s, e in spans:
        inner = s + np.flatnonzero(~is_leaf[s:e])
        lc = left[inner]
        pre[lc] = pre[inner] + 1
        pre[right[inner]] = pre[inner] + 1 + size[lc]

    # Both tables are filled in breadth-first order, where the writes run in sequence, then moved to
    # pre-order a whole row at a time (a row seen as one 24- or 8-byte item: a 1-D gather).
    by_pre = np.empty(n_nodes, dtype=np.int64)  # breadth-first node at each pre-order index
    by_pre[pre] = np.arange(n_nodes)
    rows_bf = np.empty((n_nodes, 6), dtype=np.float32)
    with np.errstate(over="ignore"):
        for r in range(6):
            x = box[r]
            if x.dtype != np.float32:  # float32 corners: the exact boxes are float32 already
                x = _round_down(x) if r < 3 else _round_up(x)
            rows_bf[:, r] = x
    bounds = np.take(rows_bf.view(np.dtype((np.void, 24))).reshape(-1), by_pre).view(np.float32)
    bounds = bounds.reshape(n_nodes, 6)
    links_bf = np.zeros((n_nodes, 2), dtype=np.int32)
    links_bf[:, 0] = np.where(is_leaf, first, pre[right])  # a leaf's right is -1: pre[-1], unused
    links_bf[:, 1] = np.where(is_leaf, count, 0)
    links = np.take(links_bf.view(np.int64).reshape(-1), by_pre).view(np.int32).reshape(n_nodes, 2)
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
