"""The kernel's 8-wide BVH: the binary tree of a compiled scene collapsed, at upload, into nodes of eight.

How it works
  * The compiled scene keeps the binary tree (meshrender.bvh; its arrays are what a store holds and
    a peer checks). The kernel walks this wide form of it: each node holds up to eight children's
    boxes side by side, so one step tests eight boxes (one 8-wide computation: LLVM's SLP vectorizer
    builds it), and the walk takes a fraction of the steps (and of the stack pushes and pops) the
    binary tree would. Four wide was 1.2-1.25x the rays per second of the binary walk; eight wide
    then 1.12x (Cornell box) and 1.13x (bunny) the rays per second of four (bench/ray_cast.py),
    1.005x, 1.018x, 1.011x (1.1M-triangle bunny) and 1.067x (glass_mesh) whole renders.
  * Collapse: a binary interior node becomes a wide node whose children start as its two; then, up
    to six times, the interior child with the largest surface area is replaced by its own two
    children (so the children are the subtrees a ray is most likely to enter). A child that is a
    binary leaf stays a leaf reference; one that is interior becomes the next wide node. Near the
    leaves a node runs out of interior children to open: the bunny's nodes hold 4.3 children on
    average. Breadth first, one level of the wide tree at a time, in numpy: no Python work per node.
  * Row layout, WIDE_FLOATS float32 per node: lo x of children 0-7, hi x 0-7, lo y 0-7, hi y 0-7,
    lo z 0-7, hi z 0-7 (BOX_COLUMNS: each plane's eight values side by side, so the kernel picks an
    axis' near and far run by the ray's direction), then the eight children's links as int32 bits:
    a wide node's index (>= 0), a leaf as ~(first triangle << 3 | count) (< 0; count <= 7), or EMPTY;
    then eight floats of padding. A power of two of floats a row makes the kernel's row offset a
    multiple of it, so LLVM sees the row's floats as consecutive and loads each run in one
    instruction (with 28 floats a row of four children, each float got its own index arithmetic: the
    walk was 3-4% slower, bench/traversal.py). The boxes are the binary nodes' own float32 boxes, so a
    wide walk finds what the binary walk finds, bit for bit (the same triangle tests on the same
    boxes' contents).
  * Stack bound: the kernel pops a node and pushes its hit children, so a node's children can need
    the stack to hold need(node) - 1 + children entries (need(root) = 1). A node is widened only while
    need + WIDTH - 1 + height <= STACK_DEPTH (height: the binary levels below it); past that it keeps
    its two children, as the binary walk would, which adds one entry per binary level. need + height
    then never grows past STACK_DEPTH - 1 (widening adds at most WIDTH - 1 to need and takes at least
    one level off height; keeping two children adds one and takes one), so the stack never overflows
    for any tree of depth <= DEPTH_MAX (check_arrays refuses deeper ones), and real trees are eight
    wide all the way down. wide_nodes also checks the largest need it made against STACK_DEPTH, so
    the kernel pushes without a test (one cost 2-5% of the walk).
"""

from __future__ import annotations

import numpy as np

from meshrender.bvh import DEPTH_MAX

WIDTH = 8  # children per node: eight boxes a step, one 8-wide box test
WIDE_LINKS = 6 * WIDTH  # the column where the links start, after the six runs of box planes
WIDE_FLOATS = 64  # 48 box floats + 8 links + 8 of padding: 256 bytes, four cache lines
LINK_COLUMNS = slice(WIDE_LINKS, WIDE_LINKS + WIDTH)
BOX_COLUMNS = [0, 3, 1, 4, 2, 5]  # bounds' columns in the row's six runs of WIDTH: lo x, hi x, lo y, ...
EMPTY = np.int32(-(2**31))  # an unused child slot
LEAF_COUNT_BITS = 3  # a leaf link holds its count in the low bits (meshrender.bvh.LEAF_TRIS_MAX <= 7)
LEAF_TRIS_LINKED = 2**LEAF_COUNT_BITS - 1  # the most triangles a leaf link can hold
FIRST_TRI_MAX = 2 ** (31 - LEAF_COUNT_BITS) - 1  # the largest first triangle a leaf link can name
STACK_DEPTH = 96  # the kernel's traversal stack, in entries: see "Stack bound" above
ROWS_CHUNK = 2**16  # triangles triangle_rows makes at a time
TRI_FLOATS = 16  # a triangle's row: p0, a pad, then its transform by column (triangle_rows)


def leaf_link(first: np.ndarray, count: np.ndarray) -> np.ndarray:
    return ~((first.astype(np.int64) << LEAF_COUNT_BITS) | count).astype(np.int32)


def _heights(left: np.ndarray, right: np.ndarray, is_leaf: np.ndarray) -> np.ndarray:
    """Binary levels below each node of the tree (0 for a leaf): one pass down the levels from the
    root, one back up."""
    height = np.zeros(len(right), np.int64)
    levels = []
    frontier = np.zeros(1, np.int64)
    while len(frontier) and len(levels) <= DEPTH_MAX + 1:
        inner = frontier[~is_leaf[frontier]]
        levels.append(inner)
        frontier = np.concatenate((left[inner], right[inner]))
    for inner in reversed(levels):
        height[inner] = 1 + np.maximum(height[left[inner]], height[right[inner]])
    return height


def wide_nodes(bounds: np.ndarray, links: np.ndarray) -> np.ndarray:
    """(M, WIDE_FLOATS) float32 rows of the wide tree made from a binary one (meshrender.bvh.BVH's
    bounds and links, as check_arrays accepts them); row 0 is the root. A tree of no nodes gives one
    row with every slot EMPTY; a root that is a leaf gives a root with that leaf as its one child."""
    n = len(links)
    first_or_right = links[:, 0].astype(np.int64)
    count = links[:, 1].astype(np.int64)
    if n and (count.max() > LEAF_TRIS_LINKED or first_or_right[count > 0].max(initial=0) > FIRST_TRI_MAX):
        raise ValueError("bvh: a leaf too large, or a triangle index too high, for the kernel's leaf links")
    row = np.zeros((1, WIDE_FLOATS), np.float32)
    row[0, LINK_COLUMNS].view(np.int32)[:] = EMPTY
    if n == 0:
        return row
    if count[0] > 0:  # the root is a leaf: one wide node with it as its only child
        row[0, 0:WIDE_LINKS:WIDTH] = bounds[0, BOX_COLUMNS]
        row[0, LINK_COLUMNS].view(np.int32)[0] = leaf_link(first_or_right[:1], count[:1])[0]
        return row
    is_leaf = np.append(count > 0, True)  # index n: the EMPTY slot (-1) reads as a leaf, never expanded
    ext = (bounds[:, 3:] - bounds[:, :3]).astype(np.float64)
    area = np.append(ext[:, 0] * ext[:, 1] + ext[:, 1] * ext[:, 2] + ext[:, 2] * ext[:, 0], -1.0)
    left = np.arange(1, n + 1, dtype=np.int64)
    right = first_or_right

    height = _heights(left, right, is_leaf)
    levels = []
    frontier = np.zeros(1, np.int64)  # binary interior nodes: the wide nodes of this level, in id order
    need = np.ones(1, np.int64)  # stack entries once a frontier node is pushed (itself included), at most
    base = 0  # the wide id of the frontier's first node
    most = 1  # the largest stack need so far
    for _ in range(DEPTH_MAX + 2):
        if not len(frontier):
            break
        f = len(frontier)
        kids = np.full((f, WIDTH), -1, np.int64)  # binary node ids, -1 for an unused slot
        kids[:, 0], kids[:, 1] = left[frontier], right[frontier]
        may_widen = need + WIDTH - 1 + height[frontier] <= STACK_DEPTH
        rows = np.arange(f)
        for slot in range(2, WIDTH):
            a = np.where(is_leaf[kids[:, :slot]], -1.0, area[kids[:, :slot]])
            j = np.argmax(a, axis=1)  # ties: the lowest slot
            ok = may_widen & (a[rows, j] >= 0)
            r, jj = rows[ok], j[ok]
            split = kids[r, jj]
            kids[r, jj], kids[r, slot] = left[split], right[split]
        used = kids >= 0
        inner = used & ~is_leaf[kids]
        next_base = base + f
        wide_id = np.full((f, WIDTH), -1, np.int64)
        wide_id[inner] = next_base + np.arange(int(inner.sum()))
        k = np.where(used, kids, 0)
        link = np.where(inner, wide_id, leaf_link(first_or_right[k], count[k])).astype(np.int32)
        link[~used] = EMPTY
        out = np.zeros((f, WIDE_FLOATS), np.float32)
        box = np.where(used[:, :, None], bounds[k], 0.0).astype(np.float32)  # (f, WIDTH, 6)
        out[:, :WIDE_LINKS] = box[:, :, BOX_COLUMNS].transpose(0, 2, 1).reshape(f, WIDE_LINKS)
        out[:, LINK_COLUMNS] = link.view(np.float32)
        levels.append(out)
        child_need = need[:, None] + used.sum(axis=1, keepdims=True) - 1
        most = max(most, int(child_need.max()))
        frontier, need = kids[inner], np.broadcast_to(child_need, kids.shape)[inner]
        base = next_base
    else:
        raise ValueError(f"bvh: deeper than {DEPTH_MAX} levels")
    if most > STACK_DEPTH:  # never, by the widening rule: checked here, so the kernel need not check
        raise ValueError(f"bvh: a walk would need {most} stack entries, the kernel has {STACK_DEPTH}")
    return np.concatenate(levels)


def triangle_rows(positions: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """(N, TRI_FLOATS) float32 rows of the triangles (indices into positions, N of them) for the
    kernel's test (kernels.tracer.tri_hit): p0, a 0, then by column the inverse M of [e1 e2 n]
    (e1 = p1 - p0, e2 = p2 - p0, n = e1 x e2), each column followed by a 0: M's x coefficients of
    its rows 0-2, then y, then z. In float64 from the float32 corners: M's rows are (e2 x n) / |n|^2,
    (n x e1) / |n|^2 and n / |n|^2. A triangle of no area (|n| = 0 or not finite) gets a zero
    transform, which the test never hits. 16 floats, so a row's offset is a multiple of 16 and each
    run of four loads as one. Made ROWS_CHUNK triangles at a time: the float64 temporaries of all of
    a 1.1M-triangle mesh at once were 400 MB, the upload's (and so the process's) peak."""
    rows = np.zeros((max(1, len(indices)), TRI_FLOATS), np.float32)
    for s in range(0, len(indices), ROWS_CHUNK):
        corners = positions[indices[s : s + ROWS_CHUNK]]  # (triangles, 3 corners, xyz)
        out = rows[s : s + ROWS_CHUNK]
        c = corners.astype(np.float64)
        with np.errstate(all="ignore"):  # a corner at infinity: its rows are zeroed below
            e1 = c[:, 1] - c[:, 0]
            e2 = c[:, 2] - c[:, 0]
            n = np.cross(e1, e2)
            nn = np.einsum("ij,ij->i", n, n)
            inv = np.where((nn > 0.0) & np.isfinite(nn), 1.0 / nn, 0.0)[:, None]
            m = np.stack([np.cross(e2, n) * inv, np.cross(n, e1) * inv, n * inv], axis=1)  # (N, row, xyz)
        m = np.where(np.isfinite(m), m, 0.0)
        out[:, 0:3] = corners[:, 0]
        for axis in range(3):
            out[:, 4 + 4 * axis : 7 + 4 * axis] = m[:, :, axis]
    return rows
