"""Image loading: 8-bit formats stay uint8 sRGB RGB, EXR/HDR become float32 linear RGB."""

from __future__ import annotations

import numpy as np
import OpenEXR
import pytest
from PIL import Image

from meshrender.errors import SceneError
from meshrender.scene.images import TextureCache, load_image, srgb_to_linear


def write_exr(path, channels: dict[str, np.ndarray]):
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    # the bindings ignore strides when writing: hand them contiguous planes
    OpenEXR.File(header, {k: np.ascontiguousarray(v) for k, v in channels.items()}).write(str(path))
    return path


def test_png_modes_become_rgb8(tmp_path):
    Image.new("RGBA", (3, 2), (10, 20, 30, 40)).save(tmp_path / "a.png")
    Image.new("L", (3, 2), 77).save(tmp_path / "l.png")
    Image.new("P", (3, 2), 0).save(tmp_path / "p.png")
    Image.fromarray(np.full((2, 3), 65535, np.uint16)).save(tmp_path / "i16.png")
    Image.new("RGB", (5, 4), (200, 100, 50)).save(tmp_path / "j.jpg", quality=100)
    expect = {"a.png": [10, 20, 30], "l.png": [77, 77, 77], "i16.png": [255, 255, 255]}
    for name in ("a.png", "l.png", "p.png", "i16.png", "j.jpg"):
        tex = load_image(tmp_path / name)
        assert tex.pixels.dtype == np.uint8 and tex.pixels.shape[2] == 3 and tex.name == name
        if name in expect:
            assert tex.pixels[1, 2].tolist() == expect[name]
    assert np.abs(load_image(tmp_path / "j.jpg").pixels.astype(int) - [200, 100, 50]).max() <= 3


def test_exr_rgb_half_and_luminance(tmp_path):
    rgb = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3) / 4
    p = write_exr(
        tmp_path / "rgb.exr", {"R": rgb[..., 0], "G": rgb[..., 1], "B": rgb[..., 2].astype(np.float16)}
    )
    tex = load_image(p)
    assert tex.pixels.dtype == np.float32 and tex.pixels.shape == (2, 3, 3)
    np.testing.assert_array_equal(tex.pixels, rgb)
    y = np.float32([[0.5, 2.0]])
    tex = load_image(write_exr(tmp_path / "y.exr", {"Y": y}))
    np.testing.assert_array_equal(tex.pixels, np.repeat(y[..., None], 3, axis=2))
    with pytest.raises(SceneError, match="no R, G, B or Y channels .*Z"):
        load_image(write_exr(tmp_path / "z.exr", {"Z": y}))


def _rgbe(rgb: np.ndarray) -> np.ndarray:
    m = rgb.max(axis=-1)
    e = np.ceil(np.log2(np.maximum(m, 1e-30))).astype(int)
    scale = np.ldexp(1.0, 8 - e)
    out = np.zeros(rgb.shape[:-1] + (4,), np.uint8)
    out[..., :3] = np.floor(rgb * scale[..., None]).clip(0, 255)
    out[..., 3] = np.where(m > 0, e + 128, 0)
    return out


def test_hdr_flat_and_run_length(tmp_path):
    h, w = 3, 9
    rgb = np.zeros((h, w, 3), np.float32)
    rgb[:, :4] = [1.0, 0.5, 0.25]
    rgb[:, 4:] = [4.0, 2.0, 8.0]
    px = _rgbe(rgb)
    head = b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n" + f"-Y {h} +X {w}\n".encode()
    flat = tmp_path / "flat.hdr"
    flat.write_bytes(head + px.tobytes())
    rle = bytearray(head)
    for y in range(h):
        rle += bytes([2, 2, w >> 8, w & 255])
        for c in range(4):
            rle += bytes([128 + 4, px[y, 0, c]])  # a run of 4
            rle += bytes([5]) + px[y, 4:, c].tobytes()  # 5 literal bytes
    (tmp_path / "rle.hdr").write_bytes(bytes(rle))
    for name in ("flat.hdr", "rle.hdr"):
        tex = load_image(tmp_path / name)
        assert tex.pixels.dtype == np.float32 and tex.pixels.shape == (h, w, 3)
        np.testing.assert_allclose(tex.pixels, rgb, rtol=1e-2)
    (tmp_path / "cut.hdr").write_bytes(bytes(rle[:-10]))
    with pytest.raises(SceneError, match="cut.hdr: HDR image is truncated"):
        load_image(tmp_path / "cut.hdr")


def test_bad_images(tmp_path):
    with pytest.raises(SceneError, match="nope.png: image file not found"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "x.bmp").write_bytes(b"BM")
    with pytest.raises(SceneError, match="unsupported image type '.bmp'"):
        load_image(tmp_path / "x.bmp")
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(SceneError, match="junk.png: image 'junk.png' is not a PNG or JPEG"):
        load_image(tmp_path / "junk.png")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:60])
    with pytest.raises(SceneError, match="cut.png: image 'cut.png' is corrupt or truncated"):
        load_image(tmp_path / "cut.png")
    (tmp_path / "junk.exr").write_bytes(b"\x76\x2f\x31\x01garbage")
    with pytest.raises(SceneError, match="junk.exr: cannot read EXR"):
        load_image(tmp_path / "junk.exr")


def test_cache_shares_objects_and_srgb_decode(tmp_path):
    Image.new("RGB", (1, 1), (255, 0, 128)).save(tmp_path / "c.png")
    cache = TextureCache()
    a = cache.load(tmp_path / "c.png")
    assert cache.load(tmp_path / "." / "c.png") is a
    lin = srgb_to_linear(a.pixels)
    assert lin.dtype == np.float32
    np.testing.assert_allclose(lin[0, 0], [1.0, 0.0, 0.2158605], atol=1e-6)
