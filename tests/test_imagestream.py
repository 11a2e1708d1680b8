"""Previews for the Stream page: the PNG is the result PNG's pixels, JPEG/WebP cost fewer bytes,
bad requests are refused, watchers of one frame share one encode, and the cache stays bounded."""

from __future__ import annotations

import io

import numpy as np
import pytest
import trio
from conftest import CORNELL_REF
from PIL import Image

from meshrender.imagestream import (
    FORMATS,
    PREVIEW_SIDE_PX_MAX,
    PreviewCache,
    encode_frame,
    encode_preview,
)
from meshrender.output import read_exr, srgb_encode, write_png
from meshrender.streaming import StreamFrame


@pytest.fixture(scope="module")
def render() -> np.ndarray:
    return read_exr(CORNELL_REF)  # the Cornell box at 4096 spp, 256x256


@pytest.fixture(scope="module")
def noisy(render) -> np.ndarray:
    """The render with Monte Carlo-like noise of mean 1 on every pixel (as a few spp look)."""
    rng = np.random.default_rng(7)
    return (render * rng.gamma(1.0, 1.0, render.shape)).astype(np.float32)


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.parametrize("exposure", [0.0, -1.0, 1.5])
def test_a_png_preview_is_the_result_pngs_pixels_exactly(render, tmp_path, exposure):
    png = encode_frame(render, exposure=exposure, fmt="png", quality=80)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    write_png(tmp_path / "result.png", render, exposure)  # what a job's result PNG holds
    assert np.array_equal(decode(png), srgb_encode(render, exposure))
    assert np.array_equal(decode(png), decode((tmp_path / "result.png").read_bytes()))


def test_jpeg_and_webp_previews_are_smaller_than_png_and_look_the_same(render, noisy):
    for image in (render, noisy):
        png = encode_frame(image, exposure=0.0, fmt="png", quality=80)
        exact = srgb_encode(image, 0.0).astype(np.int16)
        for fmt in ("jpeg", "webp"):
            data = encode_frame(image, exposure=0.0, fmt=fmt, quality=80)
            assert Image.open(io.BytesIO(data)).format == fmt.upper()
            assert len(data) < len(png) / 2, (fmt, len(data), len(png))
            got = decode(data).astype(np.int16)
            assert got.shape == exact.shape
            if image is render:  # a clean image survives lossy coding within a few levels on average
                assert np.abs(got - exact).mean() < 3, fmt
    # quality buys bytes
    low = encode_frame(noisy, exposure=0.0, fmt="jpeg", quality=20)
    high = encode_frame(noisy, exposure=0.0, fmt="jpeg", quality=95)
    assert len(low) < len(high) / 2


def test_a_256px_jpeg_stream_at_10_fps_fits_in_a_megabyte_a_second(noisy):
    assert 10 * len(encode_frame(noisy, exposure=0.0, fmt="jpeg", quality=80)) <= 1_000_000


def test_bad_requests_and_images_are_refused_naming_the_problem(render):
    for fmt in ("gif", "PNG", "", None, "png\0"):
        with pytest.raises(ValueError, match="image format"):
            encode_frame(render, exposure=0.0, fmt=fmt, quality=80)
    for q in (0, 101, -5, 80.0, "80", True, None):
        with pytest.raises(ValueError, match="image quality"):
            encode_frame(render, exposure=0.0, fmt="jpeg", quality=q)
    with pytest.raises(ValueError, match="image quality"):
        encode_frame(render, exposure=0.0, fmt="png", quality=1000)  # PNG ignores it, but it is checked
    for bad in (render[..., 0], render[..., :2], np.zeros((0, 4, 3), np.float32)):
        with pytest.raises(ValueError, match="preview image"):
            encode_frame(bad, exposure=0.0, fmt="png", quality=80)
    wide = np.broadcast_to(np.float32(0.5), (1, PREVIEW_SIDE_PX_MAX + 1, 3))
    with pytest.raises(ValueError, match="outside"):
        encode_frame(wide, exposure=0.0, fmt="webp", quality=80)
    for exposure in (float("nan"), float("inf"), 1e9):
        with pytest.raises(ValueError, match="exposure"):
            encode_frame(render, exposure=exposure, fmt="png", quality=80)


def test_nan_and_inf_pixels_encode_as_the_result_png_shows_them(render):
    image = render.copy()
    image[0, 0] = np.nan
    image[0, 1] = np.inf
    image[0, 2] = -np.inf
    got = decode(encode_frame(image, exposure=0.0, fmt="png", quality=80))
    assert got[0, 0].tolist() == [0, 0, 0] and got[0, 1].tolist() == [255, 255, 255]
    assert got[0, 2].tolist() == [0, 0, 0]


def test_a_denoised_preview_is_closer_to_the_converged_render(render, noisy):
    plain = encode_preview(noisy, exposure=0.0, fmt="png", quality=80, denoise=False)
    done = encode_preview(noisy, exposure=0.0, fmt="png", quality=80, denoise=True)
    assert not plain.denoised and plain.note == ""
    assert done.denoised, done.note
    truth = srgb_encode(render, 0.0).astype(np.float64)
    err_plain = np.abs(decode(plain.data) - truth).mean()
    err_done = np.abs(decode(done.data) - truth).mean()
    assert err_done < err_plain / 2, (err_done, err_plain)


def Frame(session: str, version: int, pass_done: int, image: np.ndarray) -> StreamFrame:
    """A session's preview, as streaming.StreamSession hands it to a watcher."""
    return StreamFrame(session=session, version=version, pass_done=pass_done, pass_count=8,
                       samples=4 * pass_done, peers=("p",), image=image, exposure=0.0, at_s=0.0)  # fmt: skip


def test_watchers_of_one_frame_share_one_encode_and_the_cache_is_bounded(render, noisy):
    cache = PreviewCache(entries_max=4)
    first = Frame("s1", 1, 1, noisy)

    async def main():
        got = []

        async def watcher():
            got.append(await cache.get(first, fmt="jpeg", quality=80, denoise=False))

        async with trio.open_nursery() as n:
            for _ in range(8):  # eight watchers ask for the same frame at once
                n.start_soon(watcher)
        assert cache.encodes == 1 and len(got) == 8 and all(g is got[0] for g in got)
        assert got[0].mime == "image/jpeg" and decode(got[0].data).shape == noisy.shape
        # the same frame in another format, quality or with the denoiser is another encode
        png = await cache.get(first, fmt="png", quality=80, denoise=False)
        assert png.mime == FORMATS["png"] and cache.encodes == 2
        assert await cache.get(first, fmt="png", quality=30, denoise=False) is png  # lossless: one PNG
        await cache.get(first, fmt="jpeg", quality=50, denoise=False)
        assert cache.encodes == 3
        # newer passes of the session are other frames; the oldest entries go
        for p in range(2, 8):
            await cache.get(Frame("s1", 1, p, render), fmt="jpeg", quality=80, denoise=False)
        assert len(cache) == 4 and cache.encodes == 9
        assert cache.bytes == sum(len(e.data) for e in cache._done.values())
        await cache.get(first, fmt="png", quality=80, denoise=False)
        assert cache.encodes == 10  # it was evicted: encoded again
        with pytest.raises(ValueError, match="image format"):
            await cache.get(first, fmt="bmp", quality=80, denoise=False)
        errors = []

        async def bad_watcher():
            try:
                await cache.get(Frame("s1", 2, 0, noisy[..., :2]), fmt="png", quality=80, denoise=False)
            except ValueError as exc:
                errors.append(str(exc))

        async with trio.open_nursery() as n:
            for _ in range(3):
                n.start_soon(bad_watcher)
        assert len(errors) == 3 and all("preview image" in e for e in errors)  # every waiter hears it
        assert cache.encodes == 10 and not cache._pending

    trio.run(main)


def test_the_cache_keeps_no_more_bytes_than_its_bound(noisy):
    one = len(encode_frame(noisy, exposure=0.0, fmt="png", quality=80))
    cache = PreviewCache(bytes_max=int(one * 2.5))

    async def main():
        for p in range(5):
            await cache.get(Frame("s", 1, p, noisy), fmt="png", quality=80, denoise=False)
            assert cache.bytes <= cache.bytes_max
        assert len(cache) == 2
        tiny = PreviewCache(bytes_max=one // 2)  # an encode bigger than the whole bound is not kept
        await tiny.get(Frame("s", 1, 0, noisy), fmt="png", quality=80, denoise=False)
        assert len(tiny) == 0 and tiny.bytes == 0

    trio.run(main)
