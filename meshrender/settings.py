"""Render settings: what a job asks for, independent of the scene's geometry.

These travel with every job (later over the wire), so every field is bounded and the struct is
frozen. A scene file gives defaults; the CLI or a job overrides them with `msgspec.structs.replace`.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

RES_PX_MAX = 16384  # larger frames would need > 3 GiB of float32 film on one peer
SPP_MAX = 1 << 20  # a million samples per pixel is far beyond any useful render
DEPTH_MAX = 64  # paths longer than this carry no visible energy with RR on
BUCKET_PX_MAX = 4096


class RenderSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    width: Annotated[int, Meta(ge=1, le=RES_PX_MAX)] = 512
    height: Annotated[int, Meta(ge=1, le=RES_PX_MAX)] = 512
    spp: Annotated[int, Meta(ge=1, le=SPP_MAX)] = 64
    # A pass is the fixed sample range [k*pass_spp, (k+1)*pass_spp); the film sums passes in
    # order k = 0, 1, ... so the split into units never changes a bit of the image.
    pass_spp: Annotated[int, Meta(ge=1, le=SPP_MAX)] = 16
    max_depth: Annotated[int, Meta(ge=1, le=DEPTH_MAX)] = 8
    rr_depth: Annotated[int, Meta(ge=1, le=DEPTH_MAX)] = 5
    seed: Annotated[int, Meta(ge=0, le=0xFFFFFFFF)] = 0
    bucket_px: Annotated[int, Meta(ge=4, le=BUCKET_PX_MAX)] = 64
    exposure: Annotated[float, Meta(ge=-32.0, le=32.0)] = 0.0  # stops, PNG only
    # also write NAME.denoised.png/.exr: Open Image Denoise over the assembled frame (meshrender.denoise)
    denoise: bool = False

    @property
    def pass_count(self) -> int:
        """Passes in a frame; the last one may hold fewer than pass_spp samples."""
        return -(-self.spp // self.pass_spp)

    def pass_range(self, k: int) -> tuple[int, int]:
        if not 0 <= k < self.pass_count:
            raise ValueError(f"pass {k} outside 0..{self.pass_count - 1}")
        return k * self.pass_spp, min(self.spp, (k + 1) * self.pass_spp)
