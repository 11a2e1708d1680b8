"""Work units: how a frame is cut into pieces any peer can render.

A unit is (frame, bucket rectangle, pass range). Buckets are a fixed grid of `bucket_px` tiles
(the last row and column may be smaller); a pass is the fixed sample range
[k * pass_spp, min(spp, (k + 1) * pass_spp)). A unit usually covers one pass; a unit may cover
several consecutive passes (one unit for the whole frame), and its result then carries one
block per pass, so the film can add every pass in canonical order whatever the split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import msgspec
import numpy as np
from msgspec import Meta

from .settings import RES_PX_MAX, SPP_MAX, RenderSettings

FRAME_MAX = 1 << 24  # frames in one job; far beyond any animation
# A unit's denoiser features per pixel and pass: albedo sums (0..2), shading-normal sums (3..5)
AOV_CHANNELS = 6
AOV_ALBEDO = slice(0, 3)
AOV_NORMAL = slice(3, 6)


class WorkUnit(msgspec.Struct, frozen=True, kw_only=True, order=True):
    frame: Annotated[int, Meta(ge=0, le=FRAME_MAX)] = 0
    x0: Annotated[int, Meta(ge=0, le=RES_PX_MAX)]
    y0: Annotated[int, Meta(ge=0, le=RES_PX_MAX)]
    width: Annotated[int, Meta(ge=1, le=RES_PX_MAX)]
    height: Annotated[int, Meta(ge=1, le=RES_PX_MAX)]
    pass_index: Annotated[int, Meta(ge=0, le=SPP_MAX)]
    pass_count: Annotated[int, Meta(ge=1, le=SPP_MAX)] = 1

    @property
    def passes(self) -> range:
        return range(self.pass_index, self.pass_index + self.pass_count)

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def check(self, settings: RenderSettings) -> None:
        """Raise ValueError when this unit does not fit the frame and pass structure."""
        if self.x0 + self.width > settings.width or self.y0 + self.height > settings.height:
            raise ValueError(f"unit {self} reaches outside the {settings.width}x{settings.height} frame")
        if self.pass_index + self.pass_count > settings.pass_count:
            raise ValueError(f"unit {self} covers passes beyond the frame's {settings.pass_count}")

    def samples(self, settings: RenderSettings) -> int:
        """Samples per pixel this unit renders."""
        first = settings.pass_range(self.pass_index)[0]
        last = settings.pass_range(self.pass_index + self.pass_count - 1)[1]
        return last - first


@dataclass(frozen=True)
class UnitResult:
    """Per-pass float32 sums: `sums[k]` is the (height, width, 3) block for pass unit.pass_index + k;
    `sample_counts[k]` its samples per pixel. `aov_sums[k]`, when present, holds the same samples'
    sums of the denoiser's albedo and normal (AOV_ALBEDO, AOV_NORMAL: kernels/aov.py says what)."""

    unit: WorkUnit
    sums: np.ndarray  # float32 (pass_count, height, width, 3)
    sample_counts: list[int]
    aov_sums: np.ndarray | None = None  # float32 (pass_count, height, width, AOV_CHANNELS)

    def __post_init__(self):
        want = (self.unit.pass_count, self.unit.height, self.unit.width, 3)
        if self.sums.dtype != np.float32 or self.sums.shape != want:
            raise ValueError(f"unit result {self.sums.dtype}{self.sums.shape}, want float32{want}")
        if len(self.sample_counts) != self.unit.pass_count:
            raise ValueError("one sample count per pass expected")
        if self.aov_sums is not None:
            want = (*want[:3], AOV_CHANNELS)
            if self.aov_sums.dtype != np.float32 or self.aov_sums.shape != want:
                raise ValueError(f"unit AOVs {self.aov_sums.dtype}{self.aov_sums.shape}, want float32{want}")


def bucket_grid(settings: RenderSettings, bucket_px: int | None = None) -> list[tuple[int, int, int, int]]:
    """Bucket rectangles (x0, y0, w, h) in row-major order."""
    b = bucket_px or settings.bucket_px
    return [
        (x, y, min(b, settings.width - x), min(b, settings.height - y))
        for y in range(0, settings.height, b)
        for x in range(0, settings.width, b)
    ]


def frame_units(
    settings: RenderSettings, *, frame: int = 0, bucket_px: int | None = None, passes_per_unit: int = 1
) -> list[WorkUnit]:
    """Every unit of a frame, pass-major (all buckets of pass 0 first: the image refines evenly)."""
    units = []
    for k in range(0, settings.pass_count, passes_per_unit):
        n = min(passes_per_unit, settings.pass_count - k)
        for x, y, w, h in bucket_grid(settings, bucket_px):
            units.append(WorkUnit(frame=frame, x0=x, y0=y, width=w, height=h, pass_index=k, pass_count=n))
    return units


def whole_frame_unit(settings: RenderSettings, frame: int = 0) -> WorkUnit:
    return WorkUnit(
        frame=frame,
        x0=0,
        y0=0,
        width=settings.width,
        height=settings.height,
        pass_index=0,
        pass_count=settings.pass_count,
    )
