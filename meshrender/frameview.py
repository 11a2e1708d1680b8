"""What a running job looks like from its coordinator, for the TUI's Frame tab.

One `FrameView` per job the peer coordinates. For the frame being rendered (the lowest one not
complete) it keeps, per bucket, the peer that holds its latest lease and the passes accepted,
and a small preview of the image: accepted sums added into cells of at most PREVIEW_COLS x
PREVIEW_ROWS, divided by their samples, tone-mapped to sRGB bytes. `to_json()` is what the peer's
snapshot carries (`frames`), so the headless peer's JSON shows the same facts.

A result discarded after its peer is convicted leaves the preview as it was until the frame is
rendered again: the preview is a picture of progress, never the output (the output is written
from the stored results, in canonical order).

When the job is done its view stays on the peer (`Peer.last_view`) until the next one, so the
TUI keeps showing the finished frame; a job that denoises hands its last frame's denoised image
to `show_final`, and the preview becomes that image (`denoised` in the JSON says so).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable

import numpy as np

PREVIEW_COLS, PREVIEW_ROWS = 96, 64  # preview cells at most (the TUI draws two rows per line)
BUCKETS_SHOWN_MAX = 16384  # a bigger grid is still tracked, but its map is not sent


def _cell_index(width: int, height: int, cols: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The preview cell column of each pixel column, and row of each pixel row."""
    px = (np.arange(width) * cols // width).astype(np.intp)
    return px, (np.arange(height) * rows // height).astype(np.intp)


def cell_means(image: np.ndarray, cols: int, rows: int) -> np.ndarray:
    """float64 (rows, cols, 3): `image` (H, W, 3) averaged over each preview cell."""
    h, w = image.shape[:2]
    px, py = _cell_index(w, h, cols, rows)
    cells = np.zeros((rows, cols, 3), np.float64)
    np.add.at(cells, (py[:, None], px[None, :]), image.astype(np.float64))
    counts = np.zeros((rows, cols), np.float64)
    np.add.at(counts, (py[:, None], px[None, :]), 1.0)
    return cells / counts[..., None]


def srgb8(linear: np.ndarray, exposure: float) -> np.ndarray:
    """uint8 sRGB of linear radiance at `exposure` stops, clipped; NaN (nothing there) is black."""
    lin = np.nan_to_num(np.clip(linear * (2.0**exposure), 0.0, 1.0))
    srgb = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * np.power(lin, 1 / 2.4) - 0.055)
    return (srgb * 255.0 + 0.5).astype(np.uint8)


def preview_json(image: np.ndarray, exposure: float) -> dict:
    """A small preview of a whole image for the snapshot: at most PREVIEW_COLS x PREVIEW_ROWS cells."""
    h, w = image.shape[:2]
    cols, rows = min(PREVIEW_COLS, w), min(PREVIEW_ROWS, h)
    rgb = srgb8(cell_means(image, cols, rows), exposure)
    return {"cols": cols, "rows": rows, "rgb": base64.b64encode(rgb.tobytes()).decode()}


class FrameView:
    def __init__(
        self, job_id: str, width: int, height: int, pass_count: int, units: Iterable, exposure: float = 0.0
    ):
        self.job_id = job_id
        self.width, self.height = width, height
        self.pass_count = pass_count
        self.exposure = exposure
        self.peers: list[str] = []  # peer ids in order of first lease: the map's colour indices
        self._peer_index: dict[str, int] = {}
        self.frames: dict[int, int] = {}  # frame -> passes still to accept, over all its buckets
        rects = set()
        for u in units:
            rects.add((u.y0, u.x0, u.width, u.height))
            self.frames[u.frame] = self.frames.get(u.frame, 0) + u.pass_count
        self.rects = [(x, y, w, h) for y, x, w, h in sorted(rects)]
        self.buckets = {(x, y): i for i, (x, y, _, _) in enumerate(self.rects)}  # row-major
        cols = min(PREVIEW_COLS, width)
        rows = min(PREVIEW_ROWS, height)
        self.preview_size = (cols, rows)
        self._px, self._py = _cell_index(width, height, cols, rows)
        self.frame = min(self.frames) if self.frames else 0
        self.finished = False  # the job ended with every unit accepted
        self._reset_frame()

    def _reset_frame(self) -> None:
        n = len(self.rects)
        self.owner = [-1] * n
        self.done = [0] * n
        cols, rows = self.preview_size
        self._sum = np.zeros((rows, cols, 3), np.float64)
        self._samples = np.zeros((rows, cols), np.float64)
        self._final: np.ndarray | None = None  # the frame's denoised image in preview cells

    def _peer(self, peer: str) -> int:
        i = self._peer_index.get(peer)
        if i is None:
            i = self._peer_index[peer] = len(self.peers)
            self.peers.append(peer)
        return i

    def leased(self, peer: str, units: Iterable) -> None:
        i = self._peer(peer)
        for u in units:
            if u.frame == self.frame:
                self.owner[self.buckets[(u.x0, u.y0)]] = i

    def accepted(self, peer: str, unit, sums: np.ndarray, sample_counts: list[int]) -> None:
        """An accepted result: `sums` float32 (passes, h, w, 3)."""
        left = self.frames.get(unit.frame, 0) - unit.pass_count
        self.frames[unit.frame] = left
        if unit.frame != self.frame:
            return
        b = self.buckets[(unit.x0, unit.y0)]
        self.done[b] += unit.pass_count
        self.owner[b] = self._peer(peer)
        py = self._py[unit.y0 : unit.y0 + unit.height]
        px = self._px[unit.x0 : unit.x0 + unit.width]
        block = sums.sum(axis=0, dtype=np.float64)  # (h, w, 3)
        np.add.at(self._sum, (py[:, None], px[None, :]), block)
        np.add.at(self._samples, (py[:, None], px[None, :]), float(sum(sample_counts)))
        if left <= 0:  # on to the next frame still rendering
            rest = [f for f, n in self.frames.items() if n > 0]
            if rest:
                self.frame = min(rest)
                self._reset_frame()

    def show_final(self, frame: int, image: np.ndarray) -> None:
        """`image` (float (height, width, 3), linear: the denoised frame) in place of the
        preview of the sums, if `frame` is the one shown and all of it is in."""
        whole = image.shape == (self.height, self.width, 3)
        if frame != self.frame or self.frames.get(frame, 0) > 0 or not whole:
            return
        self._final = cell_means(image, *self.preview_size)

    def preview(self) -> np.ndarray:
        """uint8 sRGB (rows, cols, 3); black where nothing has arrived."""
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self._sum / self._samples[..., None] if self._final is None else self._final
        return srgb8(mean, self.exposure)

    def to_json(self) -> dict:
        cols, rows = self.preview_size
        rgb = base64.b64encode(self.preview().tobytes()).decode()
        out = {
            "job": self.job_id,
            "frame": self.frame,
            "width": self.width,
            "height": self.height,
            "passes": self.pass_count,
            "finished": self.finished,
            "denoised": self._final is not None,
            "peers": list(self.peers),
            "preview": {"cols": cols, "rows": rows, "rgb": rgb},
        }
        if len(self.rects) <= BUCKETS_SHOWN_MAX:
            out["buckets"] = [[x, y, w, h] for x, y, w, h in self.rects]
            out["owner"] = list(self.owner)
            out["done"] = list(self.done)
        return out
