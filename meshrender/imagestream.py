"""A streaming session's preview, as bytes a browser shows: tone-mapped, compressed, cached.

How it works
  * `encode_frame(image, exposure=, fmt=, quality=)` tone-maps the float32 (H, W, 3) mean
    radiance exactly as a result PNG is (`output.srgb_encode`: 2**exposure, sRGB, 8 bits) and
    compresses it with Pillow: PNG (lossless: decoded, it is those 8-bit pixels), JPEG or WebP
    (lossy, at `quality` 1..100, far fewer bytes). Bad arguments raise ValueError naming them.
  * `PreviewCache` sits between a session's frames and its watchers: N watchers of one frame in
    one (format, quality, denoise) get the bytes of one encode. The first asker encodes in a
    worker thread (at most ENCODES_AT_ONCE at once, so previews never take every core from the
    renderer), the others wait for it; the cache keeps the newest ENTRIES_MAX encodes and at most
    CACHE_BYTES_MAX bytes, oldest out.
  * A client may ask for a denoised preview: the colour alone goes through `denoise.denoise`
    ("balanced" quality; a preview carries no albedo or normal). When Open Image Denoise is
    missing or fails, the client gets the noisy frame and `Encoded.note` says why.
"""

from __future__ import annotations

import io
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .output import srgb_encode

FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
QUALITY_MIN, QUALITY_MAX = 1, 100  # Pillow's JPEG and WebP scale; PNG ignores it (it is lossless)
QUALITY_DEFAULT = 80
PREVIEW_SIDE_PX_MAX = 16383  # WebP's largest side; a bigger preview is refused, not cropped
PREVIEW_PX_MAX = 1 << 24  # 4096x4096: 48 MiB of float32 in, 16 MiB of 8-bit pixels out
PNG_COMPRESS_LEVEL = 1  # zlib's fastest: a 256x256 preview in ~2 ms; level 6 is 4x slower, 10% smaller
WEBP_METHOD = 2  # libwebp's effort 0..6: 2 is ~3x faster than its default 4, a few % bigger
ENCODES_AT_ONCE = 2  # worker threads encoding or denoising previews at once, over all watchers
ENTRIES_MAX = 32  # encodes kept: a few formats of the last few frames of a session or two
CACHE_BYTES_MAX = 64 << 20  # bytes kept over all entries; a single bigger encode is not kept
DENOISE_QUALITY = "balanced"  # about twice as fast as "high": a preview is replaced within a second


@dataclass(frozen=True)
class Encoded:
    data: bytes
    mime: str
    denoised: bool  # the preview went through the denoiser
    note: str = ""  # why it did not, when it was asked to
    seconds: float = 0.0  # time spent denoising and encoding it


def check_request(fmt: str, quality: int) -> None:
    """Raise ValueError unless `fmt` and `quality` are ones `encode_frame` takes."""
    if fmt not in FORMATS:
        raise ValueError(f"image format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if isinstance(quality, bool) or not isinstance(quality, int) or not QUALITY_MIN <= quality <= QUALITY_MAX:
        raise ValueError(f"image quality {quality!r}: expected a whole number {QUALITY_MIN}..{QUALITY_MAX}")


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"preview image: expected (H, W, 3), got {getattr(image, 'shape', type(image).__name__)}"
        )
    h, w = image.shape[:2]
    if not (1 <= h <= PREVIEW_SIDE_PX_MAX and 1 <= w <= PREVIEW_SIDE_PX_MAX and h * w <= PREVIEW_PX_MAX):
        raise ValueError(
            f"preview image: {w}x{h} is outside 1..{PREVIEW_SIDE_PX_MAX} a side, {PREVIEW_PX_MAX:,} pixels"
        )


def encode_frame(image: np.ndarray, *, exposure: float, fmt: str, quality: int = QUALITY_DEFAULT) -> bytes:
    """`image` (linear float (H, W, 3)) tone-mapped as a result PNG is, compressed as `fmt`."""
    from PIL import Image

    check_request(fmt, quality)
    _check_image(image)
    if not np.isfinite(exposure) or abs(exposure) > 64:
        raise ValueError(f"exposure {exposure!r}: expected a finite number of stops within +-64")
    pixels = Image.fromarray(srgb_encode(image, exposure), "RGB")
    buf = io.BytesIO()
    if fmt == "png":
        pixels.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    elif fmt == "jpeg":
        pixels.save(buf, format="JPEG", quality=quality)
    else:
        pixels.save(buf, format="WEBP", quality=quality, method=WEBP_METHOD)
    return buf.getvalue()


def encode_preview(
    image: np.ndarray, *, exposure: float, fmt: str, quality: int, denoise: bool, threads: int = 0
) -> Encoded:
    """As `encode_frame`, denoised first when asked and possible (blocking: run it in a thread)."""
    t0 = time.perf_counter()
    note, done = "", False
    if denoise:
        from .denoise import DenoiseError
        from .denoise import denoise as oidn

        try:
            image = oidn(image, threads=threads, quality=DENOISE_QUALITY).image
            done = True
        except DenoiseError as exc:
            note = str(exc)
    data = encode_frame(image, exposure=exposure, fmt=fmt, quality=quality)
    return Encoded(data, FORMATS[fmt], done, note, time.perf_counter() - t0)


class _Pending:
    """An encode under way: the askers after the first wait for its event."""

    def __init__(self, event):
        self.event = event
        self.result: Encoded | None = None
        self.error: BaseException | None = None


class PreviewCache:
    """Encoded previews keyed by (session, version, pass, exposure, format, quality, denoise).

    Used from one trio thread (the peer's); the encoding runs in worker threads."""

    def __init__(
        self,
        *,
        entries_max: int = ENTRIES_MAX,
        bytes_max: int = CACHE_BYTES_MAX,
        encodes_at_once: int = ENCODES_AT_ONCE,
        threads: int = 0,
    ):
        import trio

        self.entries_max = entries_max
        self.bytes_max = bytes_max
        self.threads = threads  # the denoiser's (0: all cores)
        self._limiter = trio.CapacityLimiter(encodes_at_once)
        self._done: OrderedDict[tuple, Encoded] = OrderedDict()
        self._pending: dict[tuple, _Pending] = {}
        self.bytes = 0
        self.encodes = 0  # how many encodes ran (a test counts them)

    @staticmethod
    def key(frame, fmt: str, quality: int, denoise: bool) -> tuple:
        q = 0 if fmt == "png" else quality  # PNG is lossless: one encode whatever the quality asked
        return (frame.session, frame.version, frame.pass_done, float(frame.exposure), fmt, q, bool(denoise))

    def __len__(self) -> int:
        return len(self._done)

    async def get(self, frame, *, fmt: str, quality: int, denoise: bool) -> Encoded:
        """The encoded preview of `frame` (a streaming.StreamFrame); raises ValueError on bad
        arguments or an image that cannot be encoded."""
        import trio

        check_request(fmt, quality)
        key = self.key(frame, fmt, quality, denoise)
        while True:
            hit = self._done.get(key)
            if hit is not None:
                self._done.move_to_end(key)
                return hit
            pending = self._pending.get(key)
            if pending is None:
                break
            await pending.event.wait()
            if pending.result is not None:
                return pending.result
            if pending.error is not None:
                raise ValueError(str(pending.error))
            # its first asker was cancelled before it encoded: the next waiter encodes
        pending = self._pending[key] = _Pending(trio.Event())
        try:
            result = await trio.to_thread.run_sync(
                lambda: encode_preview(
                    frame.image,
                    exposure=frame.exposure,
                    fmt=fmt,
                    quality=quality,
                    denoise=denoise,
                    threads=self.threads,
                ),
                limiter=self._limiter,
            )
            self.encodes += 1
            pending.result = result
            self._keep(key, result)
        except ValueError as exc:  # an image that cannot be encoded: its waiters hear it too
            pending.error = exc
            raise
        finally:
            del self._pending[key]
            pending.event.set()
        return result

    def _keep(self, key: tuple, result: Encoded) -> None:
        size = len(result.data)
        if size > self.bytes_max:
            return
        self._done[key] = result
        self.bytes += size
        while len(self._done) > self.entries_max or self.bytes > self.bytes_max:
            _, old = self._done.popitem(last=False)
            self.bytes -= len(old.data)
