"""Denoising an assembled frame with Intel Open Image Denoise (OIDN), through the `pyoidn` wheel.

How: the caller hands over the frame's means (radiance, and the film's albedo and normal: sums
divided by samples, `Film.aov_images`), never a bucket, so the filter sees the whole frame and
leaves no seams. One OIDN CPU device per process is made on first use (its thread count is the
renderer's), with one "RT" filter in HDR mode; `cleanAux` stays off, because our features are
Monte Carlo estimates (noisy at edges, behind glass and in depth of field): OIDN then treats them
as noisy itself, and we do not prefilter them separately. The library is loaded lazily, so a
machine without it renders as before and `denoise` raises DenoiseError saying why; the frame's
size is checked against a budget before anything is allocated.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from .errors import MeshrenderError

DENOISE_PX_MAX = 1 << 25  # 8K UHD fits; inputs + output are 48 B/px (1.6 GB) at this size
SCRATCH_MB_MAX = 2048  # OIDN's own working memory; past it, it tiles (slower, never failing)
QUALITIES = {"high": "OIDN_QUALITY_HIGH", "balanced": "OIDN_QUALITY_BALANCED", "fast": "OIDN_QUALITY_FAST"}


class DenoiseError(MeshrenderError):
    """The frame cannot be denoised here: OIDN is missing or failed, or the frame is too big."""


@dataclass(frozen=True)
class Denoised:
    image: np.ndarray  # float32 (H, W, 3), linear
    seconds: float
    features: str  # "albedo+normal", "albedo", or "none" (the frame had no AOVs)


_lock = threading.Lock()
_state: dict = {}  # "device", "filter", "threads": made once per process, reused


def _check_image(name: str, img: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if not isinstance(img, np.ndarray) or img.shape != shape:
        got = getattr(img, "shape", type(img).__name__)
        raise DenoiseError(f"denoise: the {name} image is {got}, expected {shape}")
    return np.ascontiguousarray(img, np.float32)


def _filter(threads: int):
    """The process's OIDN device and filter (made on first use); raises DenoiseError."""
    if "filter" in _state and _state["threads"] == threads:
        return _state["pyoidn"], _state["device"], _state["filter"]
    try:
        import pyoidn
    except ImportError as exc:
        raise DenoiseError(f"Open Image Denoise is not installed (pip install pyoidn): {exc}") from None
    _release()
    try:
        device = pyoidn.Device(pyoidn.OIDN_DEVICE_TYPE_CPU)
        if threads > 0:
            device.set_int("numThreads", threads)
        device.commit()
        err = device.get_error()
        if err:
            raise DenoiseError(f"Open Image Denoise cannot start its CPU device: {err}")
        flt = pyoidn.Filter(device, pyoidn.OIDN_FILTER_TYPE_RT)
    except (OSError, AttributeError) as exc:  # the shared library failed to load (cffi dlopen)
        raise DenoiseError(f"Open Image Denoise cannot load its library: {exc}") from None
    _state.update(pyoidn=pyoidn, device=device, filter=flt, threads=threads)
    return pyoidn, device, flt


def _release() -> None:
    flt, device = _state.pop("filter", None), _state.pop("device", None)
    _state.pop("threads", None)
    if flt is not None:
        flt.release()
    if device is not None:
        device.release()


def denoise(
    color: np.ndarray,
    albedo: np.ndarray | None = None,
    normal: np.ndarray | None = None,
    *,
    threads: int = 0,
    quality: str = "high",
) -> Denoised:
    """The denoised frame. `color`: mean linear radiance (H, W, 3); `albedo` in [0, 1] and
    `normal` in [-1, 1], both (H, W, 3) means, optional (a normal needs the albedo too).
    `threads` 0: all cores; `quality` one of QUALITIES ("high" for final frames, "balanced" about
    twice as fast, for previews). Raises DenoiseError; never returns a partial image."""
    if quality not in QUALITIES:
        raise DenoiseError(f"denoise: quality {quality!r}, expected one of {', '.join(QUALITIES)}")
    if not isinstance(color, np.ndarray) or color.ndim != 3 or color.shape[2] != 3:
        raise DenoiseError(f"denoise: expected an (H, W, 3) image, got {getattr(color, 'shape', color)!r}")
    h, w = color.shape[:2]
    if h * w == 0 or h * w > DENOISE_PX_MAX:
        raise DenoiseError(f"denoise: a {w}x{h} frame is outside 1..{DENOISE_PX_MAX} pixels")
    if normal is not None and albedo is None:
        raise DenoiseError("denoise: a normal image needs an albedo image too (OIDN's rule)")
    images = {"color": np.nan_to_num(_check_image("color", color, color.shape), nan=0.0, posinf=0.0)}
    images["color"] = np.maximum(images["color"], 0.0)  # OIDN's HDR input is non-negative
    if albedo is not None:
        images["albedo"] = np.clip(_check_image("albedo", albedo, color.shape), 0.0, 1.0)
    if normal is not None:
        images["normal"] = np.clip(_check_image("normal", normal, color.shape), -1.0, 1.0)
    output = np.empty_like(images["color"])
    with _lock:
        pyoidn, device, flt = _filter(threads)
        t0 = time.perf_counter()
        for name in ("albedo", "normal"):
            if name not in images:
                flt.unset_image(name)
        for name, img in (*images.items(), ("output", output)):
            flt.set_image(name, img, pyoidn.OIDN_FORMAT_FLOAT3)
        flt.set_bool("hdr", True)
        flt.set_bool("cleanAux", False)
        flt.set_int("maxMemoryMB", SCRATCH_MB_MAX)
        flt.set_quality(getattr(pyoidn, QUALITIES[quality]))
        flt.commit()
        flt.execute()
        err = device.get_error()
        seconds = time.perf_counter() - t0
    if err:
        raise DenoiseError(f"Open Image Denoise failed: {err}")
    if not np.all(np.isfinite(output)):
        raise DenoiseError("Open Image Denoise returned non-finite pixels")
    features = "+".join(k for k in ("albedo", "normal") if k in images) or "none"
    return Denoised(image=output, seconds=seconds, features=features)


def denoise_frame(film, out, exposure: float = 0.0, threads: int = 0, on_image=None) -> dict:
    """Denoise an assembled Film and write NAME.denoised.png/.exr beside OUT; returns what the
    JSON record says about it. Any failure is reported there (`error`), never raised: the noisy
    frame is the render's result, the denoised one a bonus that may be missing, and says why.
    `on_image`, if given, gets the denoised image once it is written (a preview shows it)."""
    from .output import OutputError, write_denoised

    features = film.aov_images()
    albedo, normal = features if features is not None else (None, None)
    try:
        done = denoise(film.image(), albedo, normal, threads=threads)
        outputs = write_denoised(out, done.image, exposure)
    except (DenoiseError, OutputError) as exc:
        return {"error": str(exc)}
    if on_image is not None:
        on_image(done.image)
    return {"outputs": outputs, "seconds": round(done.seconds, 4), "features": done.features}
