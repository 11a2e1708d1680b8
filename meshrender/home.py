"""Where a peer keeps its state: `$MESHRENDER_HOME`, by default `$XDG_DATA_HOME/meshrender`
(`~/.local/share/meshrender`). The chunk store lives in `store/` below it; later steps add the
identity key, the job database and `results/`."""

from __future__ import annotations

import os
from pathlib import Path

STORE_QUOTA_BYTES_DEFAULT = 20 << 30  # 20 GiB: room for dozens of production scenes on a laptop


def meshrender_home(override: str | os.PathLike | None = None) -> Path:
    if override:
        return Path(override).expanduser()
    env = os.environ.get("MESHRENDER_HOME")
    if env:
        return Path(env).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data) / "meshrender"


def store_dir(home: str | os.PathLike | None = None) -> Path:
    return meshrender_home(home) / "store"


def store_quota_bytes() -> int:
    """The store's quota: `$MESHRENDER_STORE_QUOTA` (bytes, or with a K/M/G/T suffix) or 20 GiB."""
    text = os.environ.get("MESHRENDER_STORE_QUOTA", "").strip().upper()
    if not text:
        return STORE_QUOTA_BYTES_DEFAULT
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1], 1)
    digits = text[:-1] if scale > 1 else text
    try:
        return int(float(digits) * scale)
    except ValueError:
        raise ValueError(f"MESHRENDER_STORE_QUOTA={text!r} is not a size like 500M or 20G") from None
