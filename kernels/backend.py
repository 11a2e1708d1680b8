"""Choosing and starting the Taichi backend.

`auto` tries the GPU backends Taichi was built with (CUDA, then Vulkan) and falls back to the
CPU; `gpu` must get a GPU or fails; `cpu` is the LLVM x64/arm64 backend. Whatever happens is
recorded in a `BackendInfo` (which backend, whether it fell back, and the reason) so the log,
the JSON record and later the party's status can all say it. Compiled kernels are cached on
disk by Taichi's offline cache under the user's cache directory.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from meshrender.errors import BackendError

log = logging.getLogger("meshrender.backend")

BACKENDS = ("auto", "cpu", "gpu")


@dataclass(frozen=True)
class BackendInfo:
    requested: str
    name: str  # "cuda", "vulkan", "x64", "arm64", ...
    is_gpu: bool
    fell_back: bool  # a GPU was wanted (auto) but the CPU runs
    reason: str  # why this backend, in words
    threads: int  # CPU threads (0: Taichi's default, all cores)
    init_s: float

    def to_json(self) -> dict:
        return asdict(self)


_current: BackendInfo | None = None
_current_key: tuple | None = None


def kernel_cache_dir() -> Path:
    base = os.environ.get("MESHRENDER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "meshrender"
    )
    return Path(base) / "taichi"


def _try_init(ti, arch, threads: int) -> str:
    """ti.init on `arch`; returns the arch Taichi actually started ('' when it raised)."""
    kwargs = dict(
        arch=arch,
        offline_cache=True,
        offline_cache_file_path=str(kernel_cache_dir()),
        # bit-identical sums need IEEE arithmetic the compiler may not reassociate
        fast_math=False,
        log_level=ti.ERROR,
        default_fp=ti.f32,
        default_ip=ti.i32,
    )
    if threads > 0:
        kwargs["cpu_max_num_threads"] = threads
    said = io.StringIO()  # ti.init prints "Starting on arch=..." on stdout: keep it off stdout
    try:
        with contextlib.redirect_stdout(said):
            ti.init(**kwargs)
    except Exception as exc:  # Taichi raises RuntimeError and friends for a missing driver
        log.info("taichi init on %s failed: %s", arch, exc)
        return ""
    finally:
        if said.getvalue().strip():
            log.debug("taichi: %s", said.getvalue().strip())
    return ti.lang.impl.current_cfg().arch.name


def init_backend(requested: str = "auto", threads: int = 0) -> BackendInfo:
    """Start Taichi once per process for (requested, threads); later calls return the same info."""
    global _current, _current_key
    if requested not in BACKENDS:
        raise BackendError(f"unknown backend {requested!r}; choose one of {', '.join(BACKENDS)}")
    key = (requested, threads)
    if _current is not None and _current_key == key:
        return _current
    import taichi as ti

    if _current is not None:
        ti.reset()
    t0 = time.perf_counter()
    cpu_names = {"x64", "arm64"}
    info: BackendInfo
    if requested == "cpu":
        name = _try_init(ti, ti.cpu, threads)
        if not name:
            raise BackendError("the Taichi CPU backend failed to start (see the log)")
        info = BackendInfo(requested, name, False, False, "CPU requested", threads, 0.0)
    else:
        name = ""
        tried = []
        for arch in (ti.cuda, ti.vulkan):
            name = _try_init(ti, arch, threads)
            if name and name not in cpu_names:
                break
            tried.append(f"{arch.name}: not available on this machine")
            name = ""
            ti.reset()
        if name:
            info = BackendInfo(requested, name, True, False, f"GPU backend {name} started", threads, 0.0)
        elif requested == "gpu":
            raise BackendError(
                "no GPU backend could start (" + "; ".join(tried) + "); use --backend cpu or auto"
            )
        else:
            name = _try_init(ti, ti.cpu, threads)
            if not name:
                raise BackendError("neither a GPU nor the CPU backend could start")
            reason = "no GPU: " + "; ".join(tried) + "; rendering on the CPU"
            info = BackendInfo(requested, name, False, True, reason, threads, 0.0)
    info = BackendInfo(**{**asdict(info), "init_s": time.perf_counter() - t0})
    if info.fell_back:
        log.warning("backend: %s", info.reason)
    else:
        log.info("backend: %s (%s)", info.name, info.reason)
    _current, _current_key = info, key
    return info


def current_backend() -> BackendInfo | None:
    return _current
