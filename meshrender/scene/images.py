"""Image files to `TextureImage`: PNG/JPEG through Pillow, EXR through OpenEXR, HDR by hand.

8-bit formats stay as they are stored, uint8 sRGB-encoded (H, W, 3); alpha is dropped, grey
and palette images are expanded to RGB. EXR and Radiance HDR are linear, so they come back as
float32 (H, W, 3); a luminance-only (Y) EXR becomes grey. The size is read from the header and
checked against the limits below before any pixel is decoded, so an absurd image is refused
without allocating it (Pillow is only ever asked for PNG or JPEG, and its own decompression-bomb
error is reported like ours). Files are read through `SceneFiles` (confined to the scene's
folder, regular files only, a byte budget). `TextureCache` loads each file once per scene, so
materials that share an image share one `TextureImage` object (the compiler stores it once).
"""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
from pathlib import Path

import numpy as np

from ..errors import SceneError
from .confine import SceneFiles
from .types import TextureImage

TEXTURE_SIDE_PX_MAX = 32768  # wider than any texture or environment map in use (16k equirect)
TEXTURE_PIXELS_MAX = 1 << 27  # 134M pixels: 16k x 8k; 1.6 GB as float32 RGB, beyond that is a mistake
HDR_HEADER_BYTES_MAX = 64 << 10  # a Radiance header is a few lines of text
TEXTURES_PIXELS_MAX = 1 << 30  # every image of one scene together: the compiled texel table's int32 offsets
DEFLATE_RATIO_MAX = 1032  # zlib's best case: a PNG smaller than its pixels / this cannot hold them
JPEG_PIXELS_PER_BYTE_MAX = 4096  # a JPEG needs about a bit per 8x8 block and scan; 8x that, for safety
IMAGE_BYTES_MAX = 1 << 31  # a 16k x 8k float RGBA EXR stored uncompressed; more is no texture
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".exr", ".hdr")


def load_image(
    path: str | os.PathLike,
    name: str | None = None,
    *,
    files: SceneFiles | None = None,
    src: str | None = None,
) -> TextureImage:
    """Load an image file; the format is chosen by its suffix. Errors name the file. `files`
    confines it (default: to its own folder); `src` is the file that names it, for messages."""
    path = Path(path)
    name = name or path.name
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        expected = ", ".join(IMAGE_SUFFIXES)
        raise SceneError(str(path), f"unsupported image type '{suffix}' (expected {expected})")
    files = files or SceneFiles.beside(path)
    data = files.read(path, IMAGE_BYTES_MAX, "image file", src or str(path))
    if suffix == ".exr":
        return TextureImage(name, _load_exr(data, str(path), path.name))
    if suffix == ".hdr":
        return TextureImage(name, _load_hdr(data, str(path), path.name))
    return decode_image_bytes(data, name, str(path))


def decode_image_bytes(data: bytes, name: str, source: str) -> TextureImage:
    """Decode PNG or JPEG bytes (e.g. embedded in a GLB) as uint8 sRGB (H, W, 3)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=("PNG", "JPEG"))
    except UnidentifiedImageError:
        raise SceneError(source, f"image '{name}' is not a PNG or JPEG file, or it is corrupt") from None
    except Image.DecompressionBombError:  # Pillow's own check, at open: past twice its pixel limit
        raise SceneError(
            source, f"image '{name}' declares more than {TEXTURE_PIXELS_MAX} pixels (the limit)"
        ) from None
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as e:
        raise SceneError(source, f"image '{name}' cannot be read: {e}") from None
    if im.format not in ("PNG", "JPEG"):
        raise SceneError(source, f"image '{name}' is {im.format}; textures must be PNG or JPEG (or EXR/HDR)")
    _check_size(im.width, im.height, source, name)
    if (im.format == "PNG" and len(data) * DEFLATE_RATIO_MAX < im.height * (1 + (im.width + 7) // 8)) or (
        im.format == "JPEG" and len(data) * JPEG_PIXELS_PER_BYTE_MAX < im.width * im.height
    ):
        size = f"{im.width}x{im.height}"
        raise SceneError(source, f"image '{name}' is truncated: {len(data)} bytes cannot hold {size} pixels")
    try:
        with warnings.catch_warnings():
            # our own limit above replaces Pillow's decompression-bomb heuristic
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im.load()
    except (OSError, SyntaxError, ValueError, struct.error, EOFError, Image.DecompressionBombError) as e:
        raise SceneError(source, f"image '{name}' is corrupt or truncated: {e}") from None
    try:
        return TextureImage(name, _pil_to_rgb8(im))
    except (OSError, ValueError) as e:
        raise SceneError(source, f"image '{name}' cannot be converted to RGB: {e}") from None


def _pil_to_rgb8(im) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grey: keep the top 8 bits' worth of precision, as 8-bit sRGB
        grey = np.asarray(im, dtype=np.float64) / 257.0
        g8 = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(g8[:, :, None], 3, axis=2))
    if im.mode == "F":
        grey = np.clip(np.rint(np.asarray(im, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if im.mode != "RGB":
        im = im.convert("RGBA").convert("RGB") if im.mode in ("P", "PA", "LA") else im.convert("RGB")
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8)[:, :, :3])


def _check_size(width: int, height: int, source: str, name: str) -> None:
    if width < 1 or height < 1:
        raise SceneError(source, f"image '{name}' is empty ({width}x{height})")
    if max(width, height) > TEXTURE_SIDE_PX_MAX or width * height > TEXTURE_PIXELS_MAX:
        raise SceneError(
            source,
            f"image '{name}' is {width}x{height}; the limit is {TEXTURE_SIDE_PX_MAX} px a side "
            f"and {TEXTURE_PIXELS_MAX} pixels",
        )


def _load_exr(data: bytes, src: str, name: str) -> np.ndarray:
    import OpenEXR

    try:
        with OpenEXR.File(io.BytesIO(data), header_only=True) as f:
            (x0, y0), (x1, y1) = f.header()["dataWindow"]  # the header dict empties on close
        _check_size(int(x1) - int(x0) + 1, int(y1) - int(y0) + 1, src, name)
        with OpenEXR.File(io.BytesIO(data), separate_channels=True) as f:
            channels = {k: np.asarray(v.pixels) for k, v in f.channels().items()}
    except SceneError:
        raise
    except Exception as e:  # the bindings raise bare RuntimeError/ValueError for bad files
        raise SceneError(src, f"cannot read EXR image: {e}") from None
    if all(c in channels for c in "RGB"):
        rgb = np.stack([channels["R"], channels["G"], channels["B"]], axis=-1)
    elif "Y" in channels:
        rgb = np.repeat(channels["Y"][:, :, None], 3, axis=2)
    else:
        names = ", ".join(sorted(channels)) or "none"
        raise SceneError(src, f"EXR image has no R, G, B or Y channels (channels: {names})")
    if rgb.dtype.kind not in "f":
        raise SceneError(src, f"EXR channels are {rgb.dtype}; only half and float images are supported")
    return np.ascontiguousarray(rgb, dtype=np.float32)


_HDR_RES = re.compile(rb"^([-+])Y\s+(\d+)\s+([-+])X\s+(\d+)\s*$")


def _load_hdr(data: bytes, src: str, name: str) -> np.ndarray:
    """Radiance RGBE (.hdr/.pic): flat or new-style run-length scanlines, -Y H +X W orientation."""
    if not (data.startswith(b"#?RADIANCE") or data.startswith(b"#?RGBE")):
        raise SceneError(src, "not a Radiance HDR file (no '#?RADIANCE' signature)")
    end = data.find(b"\n\n", 0, HDR_HEADER_BYTES_MAX)
    if end < 0:
        raise SceneError(src, "HDR header is unterminated")
    header = data[:end].split(b"\n")
    for line in header:
        if line.startswith(b"FORMAT=") and line.strip() != b"FORMAT=32-bit_rle_rgbe":
            fmt = line[7:].decode(errors="replace")
            raise SceneError(src, f"HDR format {fmt} is not supported (only 32-bit_rle_rgbe)")
    res_end = data.find(b"\n", end + 2)
    m = _HDR_RES.match(data[end + 2 : res_end]) if res_end > 0 else None
    if m is None or m.group(1) != b"-" or m.group(3) != b"+":
        raise SceneError(src, "HDR resolution line is missing or not in the standard '-Y H +X W' order")
    height, width = int(m.group(2)), int(m.group(4))
    _check_size(width, height, src, name)
    body = np.frombuffer(data, np.uint8, offset=res_end + 1)
    # the smallest a scanline can be: flat (4 bytes a pixel) or run-length (128 pixels in 2 bytes
    # per channel at best): a short file cannot make us allocate the image it declares
    row_min = 4 + 8 * -(-width // 128) if 8 <= width < 0x8000 else 4 * width
    if len(body) < height * row_min:
        need = height * row_min
        raise SceneError(src, f"HDR image is truncated: {width}x{height} needs at least {need} bytes")
    rgbe = np.empty((height, width, 4), np.uint8)
    pos = 0
    try:
        for y in range(height):
            pos = _hdr_scanline(body, pos, rgbe[y], width)
    except IndexError:
        raise SceneError(src, f"HDR image is truncated (scanline {y + 1} of {height})") from None
    except ValueError as e:
        raise SceneError(src, f"HDR image is corrupt at scanline {y + 1}: {e}") from None
    e = rgbe[:, :, 3].astype(np.int32)
    scale = np.where(e > 0, np.ldexp(1.0, e - 136), 0.0).astype(np.float32)
    return np.ascontiguousarray(rgbe[:, :, :3].astype(np.float32) * scale[:, :, None])


def _hdr_scanline(body: np.ndarray, pos: int, out: np.ndarray, width: int) -> int:
    if 8 <= width < 0x8000 and body[pos] == 2 and body[pos + 1] == 2 and not body[pos + 2] & 0x80:
        if (int(body[pos + 2]) << 8 | int(body[pos + 3])) != width:
            raise ValueError("run-length scanline width does not match the image width")
        pos += 4
        for c in range(4):
            x = 0
            while x < width:
                count = int(body[pos])
                if count > 128:
                    count -= 128
                    if x + count > width:
                        raise ValueError("run overflows the scanline")
                    out[x : x + count, c] = body[pos + 1]
                    pos += 2
                else:
                    if count == 0 or x + count > width:
                        raise ValueError("bad run length")
                    chunk = body[pos + 1 : pos + 1 + count]
                    if len(chunk) < count:
                        raise IndexError
                    out[x : x + count, c] = chunk
                    pos += 1 + count
                x += count
        return pos
    # flat (uncompressed) scanline; old-style RLE is not supported
    chunk = body[pos : pos + 4 * width]
    if len(chunk) < 4 * width:
        raise IndexError
    out[:] = chunk.reshape(width, 4)
    if np.any((out[:, 0] == 1) & (out[:, 1] == 1) & (out[:, 2] == 1)):
        raise ValueError("old-style run-length encoding is not supported")
    return pos + 4 * width


def srgb_to_linear(pixels: np.ndarray) -> np.ndarray:
    """uint8 sRGB-encoded (H, W, 3) to float32 linear; float input is returned as float32."""
    if pixels.dtype != np.uint8:
        return np.asarray(pixels, np.float32)
    lut = np.arange(256, dtype=np.float64) / 255.0
    lut = np.where(lut <= 0.04045, lut / 12.92, ((lut + 0.055) / 1.055) ** 2.4).astype(np.float32)
    return lut[pixels]


class TextureCache:
    """Loads each image file once; the same path gives the same `TextureImage` object. `files`
    confines every image to one scene's folder (default: each image to its own folder)."""

    def __init__(self, files: SceneFiles | None = None) -> None:
        self.files = files
        self._by_path: dict[str, TextureImage] = {}
        self._pixels = 0

    def load(self, path: str | os.PathLike, *, src: str | None = None) -> TextureImage:
        key = os.path.normcase(os.path.abspath(path))
        tex = self._by_path.get(key)
        if tex is None:
            tex = load_image(path, files=self.files, src=src)
            self.add_pixels(tex, src or str(path))
            self._by_path[key] = tex
        return tex

    def add_pixels(self, tex: TextureImage, src: str) -> None:
        """Count an image (loaded here or elsewhere, e.g. embedded in a GLB) against the scene's budget."""
        self._pixels += tex.pixels.shape[0] * tex.pixels.shape[1]
        if self._pixels > TEXTURES_PIXELS_MAX:
            raise SceneError(src, f"the scene's images add up to more than {TEXTURES_PIXELS_MAX} pixels")
