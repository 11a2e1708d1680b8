"""Choosing and starting the Taichi backend.

`auto` tries the GPU backends Taichi was built with (CUDA, then Vulkan) and falls back to the
CPU; `gpu` must get a GPU or fails; `cpu` is the LLVM x64/arm64 backend. Whatever happens is
recorded in a `BackendInfo` (which backend, whether it fell back, and the reason) so the log,
the JSON record and later the party's status can all say it. Compiled kernels are cached on
disk by Taichi's offline cache under the user's cache directory; kernels/taichi_patches.py makes
Taichi's Python frontend, which runs at every process start even when the kernel is cached, cheaper.

A GPU that starts can still run out of memory on a big scene: Taichi then raises a plain
RuntimeError from its C++ core (texts in GPU_OOM_TEXTS, each with where Taichi 1.7.4 makes it).
`gpu_oom_reason` recognises those, and `fall_back_to_cpu` re-starts Taichi on the CPU
(`ti.reset()`, then the CPU backend with the same threads) and records the fallback and its
reason; the renderer (meshrender/render.py) then uploads the scene again and renders the unit
again. A test drives that very path on a machine without a GPU by MESHRENDER_FAULT (read here and
nowhere else): `gpu-oom` makes the first scene upload of the process, `gpu-oom-launch` its first
kernel launch, raise the RuntimeError Taichi raises on a CUDA out-of-memory, on any backend but
an explicit `cpu`; `gpu-oom@N` is the Nth upload (a peer's render process uploads the built-in
scene to warm the kernel first, so `@2` is a job's scene).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from meshrender.errors import BackendError

log = logging.getLogger("meshrender.backend")
# Taichi's own copy kernel for a vector ndarray (ndarray.from_numpy, taichi/_kernels.py) unrolls a
# loop over the vector's entries, and warns past 32 of them: the wide BVH rows have 64. Its compile
# time is Taichi's (bench/kernel_speed.py measures the upload with it); the warning says nothing to
# a user.
warnings.filterwarnings("ignore", message="You are unrolling more than", module="taichi._kernels")

BACKENDS = ("auto", "cpu", "gpu")
FAULT_ENV = "MESHRENDER_FAULT"  # test hook: "gpu-oom[@N]" or "gpu-oom-launch[@N]" (module docstring)
FAULT_STAGES = {"gpu-oom": "upload", "gpu-oom-launch": "launch"}
FAULT_AT_MAX = 1000  # the N of "@N": a test's count of uploads or launches, not a schedule
OOM_CHARS_MAX = 300  # Taichi's error text kept in a fallback's reason: a line, not a traceback

# What Taichi 1.7.4 raises (RuntimeError: its C++ `throw std::string` is translated by
# taichi/python/py_exception_translator.cpp) when device memory runs out, and where it comes from:
GPU_OOM_TEXTS = (
    # taichi/rhi/cuda/cuda_driver.h, CUDADriverFunction::operator(): every CUDA driver call that
    # fails, "CUDA Error CUDA_ERROR_OUT_OF_MEMORY: out of memory while calling malloc
    # (cuMemAlloc_v2)" (ndarray allocation), malloc_async_impl (cuMemAllocAsync), launch_kernel
    # (cuLaunchKernel: the kernel's local memory does not fit)
    "CUDA_ERROR_OUT_OF_MEMORY",
    # taichi/rhi/llvm/device_memory_pool.cpp, allocate_raw_memory: the pool got no pointer
    "Device memory allocation (",
    # taichi/runtime/llvm/llvm_runtime_executor.cpp, preallocate_memory (CUDA at init)
    "Failed to pre-allocate device memory",
    # taichi/runtime/gfx/runtime.cpp, launch_kernel: Vulkan buffers for a launch
    "Failed to allocate args buffer",
    "Failed to allocate ret buffer",
    "Failed to allocate ext arr buffer",
    # taichi/runtime/program_impls/gfx/gfx_program.cpp, allocate_memory_on_device: a Vulkan ndarray
    # whose VulkanDevice::allocate_memory returned RhiResult::out_of_memory (vmaCreateBuffer gave
    # VK_ERROR_OUT_OF_DEVICE_MEMORY or VK_ERROR_OUT_OF_HOST_MEMORY)
    "[gfx_program.cpp:allocate_memory_on_device@",
)
# The text Taichi 1.7.4 raises when cuMemAlloc_v2 fails allocating an ndarray (the injected fault)
CUDA_OOM_UPLOAD = (
    "[cuda_driver.h:operator()@92] CUDA Error CUDA_ERROR_OUT_OF_MEMORY: out of memory while calling "
    "malloc (cuMemAlloc_v2)"
)
CUDA_OOM_LAUNCH = (
    "[cuda_driver.h:operator()@92] CUDA Error CUDA_ERROR_OUT_OF_MEMORY: out of memory while calling "
    "launch_kernel (cuLaunchKernel)"
)


@dataclass(frozen=True)
class BackendInfo:
    requested: str
    name: str  # "cuda", "vulkan", "x64", "arm64", ...
    is_gpu: bool
    fell_back: bool  # a GPU was wanted (auto) but the CPU runs
    reason: str  # why this backend, in words
    threads: int  # CPU threads (0: Taichi's default, all cores)
    init_s: float
    cause: str = ""  # why it fell back, for programs: "no-gpu", "gpu-oom"; "" when it did not

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
        # Taichi's own IR optimiser (CSE, store forwarding, ...) spent 90 of the 93 s a cold
        # compile of the path tracer took on 2 cores, and bought nothing LLVM's passes do not:
        # without it the compile takes 3.7 s and the kernel runs as fast (Cornell box 1.45 vs
        # 1.44 Msamples/s, bunny in the box 0.95 vs 0.93: issue 16's closing note has the runs)
        advanced_optimization=False,
        # Taichi's CPU default cuts a parallel loop into one contiguous chunk per thread, so a
        # frame took as long as its slower half (the rough glass scene's bottom half costs 1.7x
        # its top, the bunny's 1.25x) or as the thread whose core another process shared;
        # without it pixels go out kernels.tracer.PIXELS_PER_TASK at a time to a free thread
        make_cpu_multithreading_loop=False,
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

    from kernels import taichi_patches

    patches = taichi_patches.apply()  # before the first kernel is built: see that module
    if not patches:
        log.info("taichi %s is not %s: its frontend runs unpatched", ti.__version__, taichi_patches.PINNED)
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
            info = BackendInfo(requested, name, False, True, reason, threads, 0.0, "no-gpu")
    info = BackendInfo(**{**asdict(info), "init_s": time.perf_counter() - t0})
    if info.fell_back:
        log.warning("backend: %s", info.reason)
    else:
        log.info("backend: %s (%s)", info.name, info.reason)
    _current, _current_key = info, key
    return info


def current_backend() -> BackendInfo | None:
    return _current


def persist_kernel_cache() -> BackendInfo | None:
    """Write the kernels this process compiled to the offline cache now, and start the same
    backend again (the caller launches its kernels anew: they load from the cache).

    Taichi 1.7.4 writes its offline cache only when the runtime finalizes (`ti.reset()`, or a
    clean interpreter exit), and the cache key includes the thread count. A render child is
    killed when it is stopped (a cancelled unit, its peer shutting down), so a child that
    compiled cold left nothing behind and the next child compiled again: with Step 8's kernel
    that was 100+ s per peer start on 2 cores, 4 s since. A reset and a reload from the cache cost about a
    second and a half, once per cold compile."""
    global _current
    info = _current
    if info is None:
        return None
    import taichi as ti

    arch = {"cuda": ti.cuda, "vulkan": ti.vulkan}.get(info.name, ti.cpu)
    ti.reset()
    name = _try_init(ti, arch, info.threads)
    if name != info.name:
        raise BackendError(f"the {info.name} backend did not start again after writing the kernel cache")
    _current = BackendInfo(**asdict(info))  # a new runtime: kernels are launched (loaded) anew
    return _current


def gpu_oom_reason(exc: BaseException) -> str | None:
    """Taichi's error text when `exc` is a device running out of memory (GPU_OOM_TEXTS), else None."""
    if not isinstance(exc, RuntimeError):
        return None
    text = str(exc)
    if any(t in text for t in GPU_OOM_TEXTS):
        return " ".join(text.split())[:OOM_CHARS_MAX]
    return None


_fault_fired: set[str] = set()  # injected faults fire once per process
_fault_seen = {"upload": 0, "launch": 0}  # uploads and launches so far, for "@N"


def injected_fault(stage: str) -> None:
    """Raise MESHRENDER_FAULT's out-of-memory error at `stage` ("upload", "launch") the Nth time
    (default 1) this process gets there on a backend that was not asked to be the CPU."""
    fault = os.environ.get(FAULT_ENV, "")
    if not fault or fault in _fault_fired:
        return
    name, _, at = fault.partition("@")
    if name not in FAULT_STAGES or not (at == "" or (at.isdigit() and 1 <= int(at) <= FAULT_AT_MAX)):
        raise BackendError(f"{FAULT_ENV}={fault[:40]!r}: expected one of {', '.join(FAULT_STAGES)}, "
                           f"optionally with @N (1..{FAULT_AT_MAX})")  # fmt: skip
    if FAULT_STAGES[name] != stage or _current is None or _current.requested == "cpu":
        return
    _fault_seen[stage] += 1
    if _fault_seen[stage] < int(at or 1):
        return
    _fault_fired.add(fault)
    log.info("%s=%s: raising a CUDA out-of-memory error at the %s", FAULT_ENV, fault, stage)
    raise RuntimeError(CUDA_OOM_UPLOAD if stage == "upload" else CUDA_OOM_LAUNCH)


def fall_back_to_cpu(oom: str) -> BackendInfo:
    """The device ran out of memory (`oom`: Taichi's text): restart Taichi on the CPU and say so.
    Every ndarray and compiled kernel of the old runtime is gone: the caller uploads again."""
    global _current
    info = _current
    if info is None:
        raise BackendError("no backend was started")
    if info.requested == "gpu":
        raise BackendError(f"the scene does not fit in GPU memory ({oom}); use --backend auto or cpu")
    import taichi as ti

    t0 = time.perf_counter()
    ti.reset()
    name = _try_init(ti, ti.cpu, info.threads)
    if not name:
        raise BackendError("the GPU ran out of memory and the CPU backend failed to start (see the log)")
    where = f" on {info.name}" if info.is_gpu else ""
    injected = f" (injected by {FAULT_ENV})" if _fault_fired else ""
    reason = f"GPU out of memory{where}{injected}: {oom}; rendering on the CPU"
    init_s = time.perf_counter() - t0
    _current = BackendInfo(info.requested, name, False, True, reason, info.threads, init_s, "gpu-oom")
    log.warning("backend: %s", reason)
    return _current
