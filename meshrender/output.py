"""Writing a rendered frame: linear EXR, display PNG, and a JSON record beside them.

Every file is written to a temporary name in the same folder, flushed and renamed over the
target, so a crash or a full disk never leaves a half-written image under the real name; an
OSError is turned into an OutputError that names the file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import MeshrenderError

IMAGE_SUFFIXES = (".png", ".exr")


class OutputError(MeshrenderError):
    pass


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def srgb_encode(linear: np.ndarray, exposure: float = 0.0) -> np.ndarray:
    """Linear radiance -> 8-bit sRGB after scaling by 2**exposure; NaN shows as black."""
    x = np.nan_to_num(linear.astype(np.float64) * (2.0**exposure), nan=0.0, posinf=1.0, neginf=0.0)
    x = np.clip(x, 0.0, 1.0)
    enc = np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)
    return np.round(enc * 255.0).astype(np.uint8)


def write_png(path: str | os.PathLike, linear: np.ndarray, exposure: float = 0.0) -> None:
    from PIL import Image

    img = Image.fromarray(srgb_encode(linear, exposure), "RGB")
    _atomic_write(Path(path), lambda tmp: img.save(tmp, format="PNG"))


def write_exr(path: str | os.PathLike, linear: np.ndarray) -> None:
    import OpenEXR

    rgb = np.ascontiguousarray(linear, np.float32)
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}

    def write(tmp):
        with OpenEXR.File(header, {"RGB": rgb}) as f:
            f.write(tmp)

    _atomic_write(Path(path), write)


def read_exr(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) float32 from an RGB (or Y) EXR."""
    import OpenEXR

    with OpenEXR.File(str(path)) as f:
        ch = f.channels()
        if "RGB" in ch:
            return np.asarray(ch["RGB"].pixels, np.float32)
        if all(c in ch for c in "RGB"):
            return np.stack([np.asarray(ch[c].pixels, np.float32) for c in "RGB"], -1)
        if "Y" in ch:
            y = np.asarray(ch["Y"].pixels, np.float32)
            return np.stack([y, y, y], -1)
        raise OutputError(f"{path}: no RGB or Y channels (has {sorted(ch)})")


def write_json(path: str | os.PathLike, record: dict) -> None:
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    _atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))


def denoised_path(out: str | os.PathLike, suffix: str) -> Path:
    """NAME.denoised.png / NAME.denoised.exr beside OUT (NAME.png or NAME.exr)."""
    return Path(out).with_suffix("").with_suffix(f".denoised{suffix}")


def write_denoised(out: str | os.PathLike, linear: np.ndarray, exposure: float = 0.0) -> list[str]:
    """Write the denoised frame beside OUT's noisy pair, same kinds; returns the paths written."""
    exr, png = denoised_path(out, ".exr"), denoised_path(out, ".png")
    write_exr(exr, linear)
    write_png(png, linear, exposure)
    return [str(exr), str(png)] if Path(out).suffix.lower() == ".exr" else [str(png), str(exr)]


def write_outputs(
    out: str | os.PathLike, linear: np.ndarray, record: dict, exposure: float = 0.0
) -> list[str]:
    """Write OUT (.png or .exr) plus its sibling of the other kind and OUT's .json record.

    Returns the paths written. The EXR keeps the full linear range; the PNG is for display.
    """
    out = Path(out)
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise OutputError(f"{out}: output must end in .png or .exr")
    stem = out.with_suffix("")
    png, exr, rec = stem.with_suffix(".png"), stem.with_suffix(".exr"), stem.with_suffix(".json")
    write_exr(exr, linear)
    write_png(png, linear, exposure)
    written = [str(exr), str(png)] if out.suffix.lower() == ".exr" else [str(png), str(exr)]
    write_json(rec, {**record, "outputs": written + [str(rec)]})
    return written + [str(rec)]
