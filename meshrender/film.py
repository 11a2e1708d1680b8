"""The film: adds unit results into a frame in canonical pass order.

Floating-point addition is not associative, so the film never adds passes in arrival order.
For every pixel it keeps the running sum of passes 0..k-1 and the next pass it expects (k).
A result for pass k is added when every pixel it covers expects k; anything that arrives early
waits in `pending` until the gap before it is filled. The sum of a pixel is therefore always
(((p0 + p1) + p2) + ...), bit for bit the same however the frame was split and in whatever order
units came back. A result for a pass a pixel already has is a duplicate: it is compared bit for
bit (that is how duplicated leases are verified later) and never added twice.

The denoiser's albedo and normal sums (a unit's `aov_sums`) ride with their radiance block and are
added in the same canonical order, so they are as split-independent as the image. A block that
came without them (an older peer's result) leaves its pixels without features: `aov_images()`
then answers None rather than hand the denoiser a patchwork.
"""

from __future__ import annotations

import numpy as np

from .settings import RenderSettings
from .units import AOV_ALBEDO, AOV_CHANNELS, AOV_NORMAL, UnitResult, WorkUnit

PENDING_BLOCKS_MAX = 1 << 16  # early pass blocks held at once; a frame has far fewer units


class FilmError(ValueError):
    """A result that does not fit this film (wrong frame, outside it, or mismatching duplicate)."""


class Film:
    def __init__(self, settings: RenderSettings, frame: int = 0):
        self.settings = settings
        self.frame = frame
        h, w = settings.height, settings.width
        self.sums = np.zeros((h, w, 3), np.float32)
        self.samples = np.zeros((h, w), np.int64)
        self.next_pass = np.zeros((h, w), np.int32)
        self.aov_sums = np.zeros((h, w, AOV_CHANNELS), np.float32)
        self.aov_missing = np.zeros((h, w), bool)  # a pass block without AOVs was added here
        # early blocks: (pass, x0, y0, w, h) -> (sums, sample count, AOV sums or None)
        self.pending: dict[tuple[int, int, int, int, int], tuple[np.ndarray, int, np.ndarray | None]] = {}
        # every pass block added, kept by key so a duplicate can be compared bit for bit
        self._added: dict[tuple[int, int, int, int, int], tuple[np.ndarray, np.ndarray | None]] = {}
        self.keep_blocks = True

    # ------------------------------------------------------------------ adding
    def add(self, result: UnitResult) -> int:
        """Add a unit result; returns how many pass blocks became part of the image now."""
        u = result.unit
        if u.frame != self.frame:
            raise FilmError(f"unit of frame {u.frame} given to the film of frame {self.frame}")
        try:
            u.check(self.settings)
        except ValueError as exc:
            raise FilmError(str(exc)) from None
        for k, (block, count) in enumerate(zip(result.sums, result.sample_counts, strict=True)):
            key = (u.pass_index + k, u.x0, u.y0, u.width, u.height)
            aov = None if result.aov_sums is None else result.aov_sums[k]
            if key in self._added or key in self.pending:
                prior, prior_aov = self._added.get(key) or self.pending[key][::2]
                same = np.array_equal(prior.view(np.uint32), block.view(np.uint32))
                if same and prior_aov is not None and aov is not None:
                    same = np.array_equal(prior_aov.view(np.uint32), aov.view(np.uint32))
                if not same:
                    raise FilmError(
                        f"duplicate of pass {key[0]} at ({u.x0},{u.y0}) differs from the first result"
                    )
                continue
            if len(self.pending) >= PENDING_BLOCKS_MAX:
                raise FilmError("too many early pass blocks waiting for earlier passes")
            aov = None if aov is None else np.array(aov, np.float32, copy=True)
            self.pending[key] = (np.array(block, np.float32, copy=True), int(count), aov)
        return self._drain()

    def _drain(self) -> int:
        added = 0
        progress = True
        while progress and self.pending:
            progress = False
            for key in sorted(self.pending):
                k, x0, y0, w, h = key
                window = self.next_pass[y0 : y0 + h, x0 : x0 + w]
                if np.all(window == k):
                    block, count, aov = self.pending.pop(key)
                    self.sums[y0 : y0 + h, x0 : x0 + w] += block
                    self.samples[y0 : y0 + h, x0 : x0 + w] += count
                    if aov is None:
                        self.aov_missing[y0 : y0 + h, x0 : x0 + w] = True
                    else:
                        self.aov_sums[y0 : y0 + h, x0 : x0 + w] += aov
                    window += 1
                    if self.keep_blocks:
                        self._added[key] = (block, aov)
                    added += 1
                    progress = True
        return added

    # ------------------------------------------------------------------ reading
    @property
    def complete(self) -> bool:
        return not self.pending and bool(np.all(self.next_pass == self.settings.pass_count))

    def passes_done(self, unit: WorkUnit) -> int:
        """Passes of the unit's rectangle already in the image (the minimum over its pixels)."""
        return int(self.next_pass[unit.y0 : unit.y0 + unit.height, unit.x0 : unit.x0 + unit.width].min())

    def image(self) -> np.ndarray:
        """Mean radiance per pixel, float32 (H, W, 3); pixels with no sample yet are 0."""
        n = np.maximum(self.samples, 1).astype(np.float32)[..., None]
        return (self.sums / n).astype(np.float32)

    def aov_images(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(albedo, normal): the mean of each per pixel, float32 (H, W, 3), as the denoiser wants
        them; None while any pixel added a pass without AOVs."""
        if self.aov_missing.any():
            return None
        n = np.maximum(self.samples, 1).astype(np.float32)[..., None]
        albedo = np.clip(self.aov_sums[..., AOV_ALBEDO] / n, 0.0, 1.0).astype(np.float32)
        normal = np.clip(self.aov_sums[..., AOV_NORMAL] / n, -1.0, 1.0).astype(np.float32)
        return albedo, normal
