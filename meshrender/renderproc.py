"""The peer's renderer runs in a child process: Taichi holds the GIL for a whole kernel.

Measured: a 5 s CPU kernel launched from a thread let another Python thread run 3 times in those
5 s. A peer rendering in-process would miss its own pings (members would declare it lost within
2 s) and answer nothing while a unit renders. So each peer starts one render process, and the
event loop only waits on a pipe.

The child (`python -m meshrender.renderproc STORE_ROOT BACKEND THREADS`) starts the backend,
answers `Ready` with what it got (backend name, whether it fell back to the CPU), then serves
`Render` requests one at a time: it loads the scene from the store (its own `ChunkStore` on the
same root; the last scene stays loaded), renders the unit and answers `Rendered` (per-pass float32
sums as bytes) or `Failed` (the reason in words: a missing chunk, a unit outside the frame). Frames
are length-prefixed msgpack on stdin/stdout; the child's logging goes to stderr.

Starting is watched, not timed. Importing Taichi and compiling the kernel on an empty kernel cache
takes 8 s of CPU; beside busy loops on a loaded machine that is minutes of wall time, and the
compile holds the GIL throughout (measured: a thread in the child could not run for 6.6 s of a
7.6 s cold compile). So the child says what it is doing (`Starting`: loading, starting the
backend, compiling kernels, and whether the kernel cache was empty) at each step and every
CHILD_BEAT_S while its GIL lets it, and the parent counts both those messages and any growth of
the child's CPU time (/proc) as signs of life: a start fails when the child has shown none for
START_STALL_S (frozen, deadlocked), dies, or is still not ready after START_MAX_S. A slow compile
is reported as progress (`on_state`, every START_NOTE_S), never as a failure.

Stopping a unit mid-kernel is killing the process (that is how a cancel stops every worker within
a second); `RenderProcess` starts a fresh one on the next request. A child that dies or answers
garbage raises RenderError and is restarted next time; a start that failed is tried again only
after a back-off (RESTART_BACKOFF_S, growing with each failure in a row), and the peer keeps
trying (`peer.rendering.Rendering.warm`) rather than giving up after one miss.

A GPU that runs out of memory on a scene (meshrender/render.py falls back to the CPU inside the
child) keeps the child alive on the CPU: `Ready` (when it happened while warming) or `Rendered`
says which backend the child runs on now and why, the parent's `ready` follows, and `on_state`
hears of it. A unit that began on a GPU and ended on the CPU is not returned as the job's backend
class: `render` raises BackendChanged (a RendererDown: the lease goes back without a strike).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import struct
import sys
import threading
import time
from typing import Annotated

import msgspec
import numpy as np
import trio
from msgspec import Meta

from .errors import MeshrenderError
from .settings import RenderSettings
from .units import AOV_CHANNELS, UnitResult, WorkUnit

log = logging.getLogger("meshrender.renderproc")

HEADER = struct.Struct(">I")
MSG_BYTES_MAX = 1 << 30  # one unit's sums: a 4096^2 bucket x 8 passes x 12 bytes would be 1.6 GB
START_STALL_S = 60.0  # no message and no CPU time used for this long while starting: frozen, give up
START_MAX_S = 1800.0  # alive but still not ready after this (a compile looping forever): give up
LIFE_POLL_S = 1.0  # how often a starting child's CPU time is read
CHILD_BEAT_S = 1.0  # a starting child says "still at it" this often (when its GIL lets it)
START_NOTE_S = 10.0  # a long start is reported (on_state) this often: progress the user can see
RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)  # wait before the Nth start in a row after failures
SLOW_START_ENV = "MESHRENDER_RENDERER_SLOW_START_S"  # test hook: the child idles this long before starting


def restart_backoff_s(failures: int) -> float:
    """Seconds to wait before starting again after `failures` failed starts in a row."""
    if failures <= 0:
        return 0.0
    return RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S)) - 1]


class RenderError(MeshrenderError):
    """The unit cannot be rendered here (a missing chunk, a unit outside the frame): asking
    again gets the same answer."""


class RendererDown(RenderError):
    """The render process did not start, died or answered garbage: it is started again (after a
    back-off), so this passes."""


class BackendChanged(RendererDown):
    """The render process fell back from the GPU to the CPU during this unit (out of GPU memory)."""


class _Msg(msgspec.Struct, frozen=True, kw_only=True, tag_field="t"):
    pass


class Ready(_Msg, tag="ready"):
    backend: str
    is_gpu: bool
    fell_back: bool
    reason: str
    threads: int
    kernel_s: float = 0.0  # compiling the kernel (or loading it from the disk cache) at start
    cause: str = ""  # why it fell back: "no-gpu", "gpu-oom" (kernels.backend.BackendInfo.cause)


class Starting(_Msg, tag="starting"):
    """The child is alive and getting ready (sent before Ready, never after it)."""

    phase: str  # "loading", "starting the backend", "compiling kernels"
    elapsed_s: float
    cold: bool = False  # the kernel cache was empty: the first compile is slow, and that is normal


class Render(_Msg, tag="render"):
    scene_id: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
    settings: RenderSettings
    unit: WorkUnit


class Rendered(_Msg, tag="rendered"):
    unit: WorkUnit
    sample_counts: list[int]
    sums: bytes  # float32 (pass_count, height, width, 3), C order
    seconds: float
    compile_s: float  # > 0 when this unit paid for compiling the kernel (or loading it from cache)
    # where the child renders now: it changes when the GPU ran out of memory ("" from an old child)
    backend: str = ""
    is_gpu: bool = False
    fell_back: bool = False
    reason: str = ""
    cause: str = ""
    aov_sums: bytes = b""  # float32 (pass_count, height, width, AOV_CHANNELS): albedo, normal sums


class Failed(_Msg, tag="failed"):
    reason: str


_Any = Ready | Starting | Render | Rendered | Failed
_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(_Any)


def _frame(msg: _Msg) -> bytes:
    body = _enc.encode(msg)
    return HEADER.pack(len(body)) + body


# ---------------------------------------------------------------------------- the child


def _warm_kernel(backend: str, threads: int) -> float:
    """Compile the kernel (or load it from the disk cache) on the built-in scene, before any job
    asks: the kernel takes the scene as array arguments, so this one compilation serves every
    scene with the built-in scene's features (kernels/features.py: diffuse surfaces and area
    lights); a job's scene with other parts compiles (or loads) its own on its first unit, which
    the speed estimate leaves out as it does any unit that compiled. Returns the seconds it
    took; a failure here is left for the first real unit to report."""
    from .render import Renderer
    from .scene.compile import compile_scene
    from .scene.load import load_scene

    t0 = time.perf_counter()
    try:
        Renderer(compile_scene(load_scene("cornell")), backend=backend, threads=threads).warm_up()
    except Exception as exc:  # noqa: BLE001 - reported by the first unit, with its own context
        log.warning("warming the kernel failed: %s", exc)
        return 0.0
    return round(time.perf_counter() - t0, 3)


def _cache_is_empty() -> bool:
    from kernels.backend import kernel_cache_dir

    try:
        return not any(kernel_cache_dir().iterdir())
    except OSError:  # not made yet
        return True


class _Beats:
    """The starting child's "still at it" messages, from a thread; none once Ready is sent."""

    def __init__(self, send):
        self._send = send
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self.phase = "loading"
        self.cold = False
        self._done = threading.Event()
        threading.Thread(target=self._run, name="beats", daemon=True).start()

    def say(self, phase: str) -> None:
        self.phase = phase
        self._beat()

    def _beat(self) -> None:
        with self._lock:
            if not self._done.is_set():
                self._send(Starting(phase=self.phase, elapsed_s=round(time.monotonic() - self._t0, 1),
                                    cold=self.cold))  # fmt: skip

    def _run(self) -> None:
        while not self._done.wait(CHILD_BEAT_S):
            try:
                self._beat()
            except OSError:  # the parent is gone
                return

    def finish(self, last: _Msg) -> None:
        """Send `last` (Ready or Failed): no beat comes after it."""
        with self._lock:
            self._done.set()
            self._send(last)


def _child(store_root: str, backend: str, threads: int) -> int:
    # Ctrl-C on a terminal signals the whole process group: the parent stops us (stdin closes, or
    # a kill), so the child ignores it rather than die mid-frame with a traceback on the terminal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = sys.stdout.buffer
    inp = sys.stdin.buffer

    def send(msg: _Msg) -> None:
        out.write(_frame(msg))
        out.flush()

    beats = _Beats(send)  # before the imports: importing Taichi on a loaded machine takes a while
    slow = os.environ.get(SLOW_START_ENV)
    if slow:
        time.sleep(float(slow))
    from kernels.backend import BackendError, current_backend, init_backend, persist_kernel_cache

    from .render import Renderer
    from .store.chunkstore import ChunkStore, StoreError
    from .store.manifest import MissingChunksError
    from .store.scenes import load_compiled

    store = ChunkStore(store_root)
    loaded: tuple[str, Renderer] | None = None
    beats.say("starting the backend")
    try:
        info = init_backend(backend, threads)
    except BackendError as exc:
        beats.finish(Failed(reason=str(exc)))
        return 2
    beats.cold = _cache_is_empty()
    beats.say("compiling kernels")
    kernel_s = _warm_kernel(backend, threads)
    # It compiled (the cache was empty): write the cache now, this child may be killed. Not by
    # how long the warm-up took: on a loaded machine a load from the cache can take 5 s and more,
    # and a second warm-up there is a second scene upload for nothing. A compile into a cache that
    # holds other kernels (another thread count) is written when this child exits.
    if beats.cold:
        try:
            persist_kernel_cache()
            kernel_s += _warm_kernel(backend, threads)  # loads what was just written
        except BackendError as exc:
            log.warning("could not write the kernel cache: %s", exc)
    info = current_backend() or info  # warming may have run out of GPU memory and moved to the CPU
    beats.finish(Ready(backend=info.name, is_gpu=info.is_gpu, fell_back=info.fell_back, reason=info.reason,
                       threads=info.threads, kernel_s=kernel_s, cause=info.cause))  # fmt: skip
    while True:
        header = inp.read(HEADER.size)
        if len(header) < HEADER.size:
            return 0  # the peer closed the pipe: done
        (n,) = HEADER.unpack(header)
        req = _dec.decode(inp.read(n))
        if not isinstance(req, Render):
            send(Failed(reason=f"{type(req).__name__} is not a render request"))
            continue
        try:
            if loaded is None or loaded[0] != req.scene_id:
                loaded = None  # the old scene's device arrays go before the new one's come
                loaded = (req.scene_id, Renderer(load_compiled(store, req.scene_id), backend=backend,
                                                 threads=threads))  # fmt: skip
            renderer = loaded[1]
            compiled_before = renderer.stats.compile_s
            t0 = time.perf_counter()
            result = renderer.render_unit(req.unit, req.settings)
            seconds = time.perf_counter() - t0
            compile_s = renderer.stats.compile_s if compiled_before == 0 else 0.0
            b = renderer.backend
            send(Rendered(unit=req.unit, sample_counts=result.sample_counts,
                          sums=np.ascontiguousarray(result.sums).tobytes(), seconds=seconds,
                          aov_sums=np.ascontiguousarray(result.aov_sums).tobytes(), compile_s=compile_s,
                          backend=b.name, is_gpu=b.is_gpu, fell_back=b.fell_back,
                          reason=b.reason, cause=b.cause))  # fmt: skip
        except (MissingChunksError, StoreError, ValueError, BackendError) as exc:
            send(Failed(reason=str(exc)))


# ---------------------------------------------------------------------------- the parent


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) process `pid` has used, or None where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _start_note(phase: str, cold: bool, seconds: float) -> str:
    if phase == "compiling kernels":
        what = "compiling kernels (first run, cold cache)" if cold else "loading kernels from the cache"
    else:
        what = phase[:60]  # "loading" (importing Taichi), "starting the backend"
    return f"renderer {what}, {seconds:.0f} s so far"


class UrgentFirstLock:
    """A lock whose urgent waiters go before the others (FIFO within each kind): a streaming
    session's one-pass units do not wait behind a batch job's queued units, only behind the one
    in the kernel."""

    def __init__(self):
        self._lock = trio.Lock()
        self._urgent_waiting = 0

    @contextlib.asynccontextmanager
    async def hold(self, urgent: bool = False):
        if urgent:
            self._urgent_waiting += 1
            try:
                await self._lock.acquire()
            finally:
                self._urgent_waiting -= 1
        else:
            while True:
                await self._lock.acquire()
                if not self._urgent_waiting:
                    break
                self._lock.release()  # trio hands it to the first waiter: an urgent one is queued
        try:
            yield
        finally:
            self._lock.release()


class RenderProcess:
    """A render child for this peer; `render` starts one when none runs.

    `state` says where it is: "stopped", "starting", "compiling", "ready" or "failed" (with
    `last_error`, `failures` in a row, and `retry_at` on the trio clock), and `note` says it in
    words ("compiling kernels (first run, cold cache), 40 s so far"); `on_state(self)` hears of
    every change and, during a long start, every START_NOTE_S."""

    def __init__(self, store_root, *, backend: str = "auto", threads: int = 0, log_path=None,
                 on_state=None, stall_s: float = START_STALL_S):  # fmt: skip
        """`log_path`: a file the child's log lines are appended to (None: this process's stderr,
        which a full-screen app cannot share). `stall_s`: how long a starting child may show no
        sign of life."""
        self.store_root = str(store_root)
        self.log_path = log_path
        self.backend = backend
        self.threads = threads
        self.on_state = on_state
        self.stall_s = stall_s
        self.ready: Ready | None = None
        self.loaded_scene: str | None = None  # the scene the child has loaded and compiled for
        self.state = "stopped"
        self.note = ""
        self.failures = 0  # failed starts in a row
        self.starts = 0  # children started, ever
        self.last_error = ""
        self.retry_at = 0.0  # trio clock: no start before this (a back-off after failures)
        self._proc: trio.Process | None = None
        self._lock = UrgentFirstLock()
        self._start_lock = trio.Lock()
        self._buf = bytearray()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None and self.ready is not None

    def _set(self, state: str, note: str) -> None:
        self.state, self.note = state, note
        if self.on_state is not None:
            try:
                self.on_state(self)
            except Exception:  # a broken listener must not stop the renderer
                log.exception("renderer state listener failed")

    async def start(self) -> Ready:
        """The running child's Ready, or start one (after the back-off if the last starts failed);
        RenderError when this start fails."""
        async with self._start_lock:  # two callers at once start one child
            if self.running():
                return self.ready
            wait = self.retry_at - trio.current_time()
            if wait > 0:
                await trio.sleep(wait)
            try:
                ready = await self._start()
            except RenderError as exc:
                self.failures += 1
                self.last_error = str(exc)
                self.retry_at = trio.current_time() + restart_backoff_s(self.failures)
                self._set("failed", f"did not start ({self.failures} in a row): {exc}")
                raise RendererDown(str(exc)) from None
            self.failures, self.last_error, self.retry_at = 0, "", 0.0
            return ready

    async def wait_exited(self) -> int | None:
        """Wait until the running child exits (killed, crashed, or stopped); its exit code."""
        proc = self._proc
        if proc is None:
            return None
        code = await proc.wait()
        if self._proc is proc:  # not stopped by us: it died
            self.ready, self.loaded_scene = None, None
            self._set("stopped", f"the renderer exited (code {code})")
        return code

    async def _start(self) -> Ready:
        await self.stop()  # a dead child's leftovers
        cmd = [sys.executable, "-m", __name__, self.store_root, self.backend, str(self.threads)]
        t0 = trio.current_time()
        self.starts += 1
        self._set("starting", "renderer loading")
        if self.log_path is None:
            self._proc = await trio.lowlevel.open_process(cmd, stdin=-1, stdout=-1)  # -1: subprocess.PIPE
        else:
            with open(self.log_path, "ab") as log_file:  # the child keeps its own descriptor
                self._proc = await trio.lowlevel.open_process(cmd, stdin=-1, stdout=-1, stderr=log_file)
        self._buf = bytearray()
        try:
            msg = await self._wait_ready(t0)
        except BaseException:
            await self.stop()
            raise
        self.ready = msg
        took = trio.current_time() - t0
        self._set("ready", f"ready on {msg.backend} after {took:.0f} s (kernel {msg.kernel_s:.1f} s)")
        return msg

    async def _wait_ready(self, t0: float) -> Ready:
        pid = self._proc.pid
        cpu = cpu_seconds(pid)
        life = t0
        next_note = t0 + START_NOTE_S
        phase, cold = "loading", False
        while True:
            msg = None
            with trio.move_on_after(LIFE_POLL_S):  # a cancelled read keeps its bytes in self._buf
                msg = await self._read()
            now = trio.current_time()
            if isinstance(msg, Ready):
                return msg
            if isinstance(msg, Failed):
                raise RenderError(f"the renderer did not start: {msg.reason}")
            if msg is not None and not isinstance(msg, Starting):
                raise RenderError(f"the renderer said {type(msg).__name__} instead of Ready")
            if msg is not None:
                life = now
                if (msg.phase, msg.cold) != (phase, cold):
                    phase, cold = msg.phase, msg.cold
                    self._set("compiling" if phase == "compiling kernels" else "starting",
                              _start_note(phase, cold, now - t0))  # fmt: skip
            used = cpu_seconds(pid)
            if used is not None and (cpu is None or used > cpu):
                cpu, life = used, now  # compiling with the GIL held: no messages, but CPU time
            if now - life > self.stall_s:
                raise RenderError(f"the renderer showed no sign of life for {now - life:.0f} s while "
                                  f"{phase} ({now - t0:.0f} s after it was started)")  # fmt: skip
            if now - t0 > START_MAX_S:
                raise RenderError(f"the renderer was still {phase} after {START_MAX_S:.0f} s")
            if now >= next_note:
                next_note = now + START_NOTE_S
                self._set(self.state, _start_note(phase, cold, now - t0))

    async def render(
        self, scene_id: str, settings: RenderSettings, unit: WorkUnit, *, urgent: bool = False
    ) -> tuple[UnitResult, Rendered]:
        """Render one unit; RenderError if the scene cannot be loaded, RendererDown if the child
        cannot start or dies (stopped by `stop` included). An `urgent` unit (a streaming
        session's) goes before units of queued jobs waiting for the child."""
        async with self._lock.hold(urgent):
            await self.start()
            try:
                request = Render(scene_id=scene_id, settings=settings, unit=unit)
                await self._proc.stdin.send_all(_frame(request))
                msg = await self._read()
            except (trio.BrokenResourceError, trio.ClosedResourceError, RenderError) as exc:
                await self.stop()
                raise RendererDown(f"the renderer died: {exc}") from None
            if isinstance(msg, Failed):
                raise RenderError(msg.reason)
            if not isinstance(msg, Rendered) or msg.unit != unit:
                await self.stop()
                raise RendererDown("the renderer answered something else than the unit asked for")
            was_gpu = self.ready.is_gpu
            self._follow_backend(msg)
            if was_gpu and not self.ready.is_gpu:
                raise BackendChanged(f"this peer renders on the CPU now: {self.ready.reason}")
            shape = (unit.pass_count, unit.height, unit.width, 3)
            sums = np.frombuffer(msg.sums, np.float32)
            if sums.size != int(np.prod(shape)):
                await self.stop()
                raise RendererDown("the renderer sent sums of the wrong size")
            aov = np.frombuffer(msg.aov_sums, np.float32)
            if aov.size not in (0, int(np.prod(shape[:3])) * AOV_CHANNELS):
                await self.stop()
                raise RendererDown("the renderer sent AOV sums of the wrong size")
            aov = aov.reshape(*shape[:3], AOV_CHANNELS) if aov.size else None
            self.loaded_scene = scene_id
            result = UnitResult(unit=unit, sums=sums.reshape(shape), sample_counts=list(msg.sample_counts),
                                aov_sums=aov)  # fmt: skip
            return result, msg

    def _follow_backend(self, msg: Rendered) -> None:
        """The child says where it renders now: a GPU out of memory moved it to the CPU."""
        r = self.ready
        if not msg.backend or (msg.backend, msg.is_gpu, msg.fell_back, msg.reason, msg.cause) == (
            r.backend, r.is_gpu, r.fell_back, r.reason, r.cause):  # fmt: skip
            return
        self.ready = msgspec.structs.replace(r, backend=msg.backend[:32], is_gpu=msg.is_gpu,
                                             fell_back=msg.fell_back, reason=msg.reason,
                                             cause=msg.cause[:32])  # fmt: skip
        log.warning("the renderer moved to %s: %s", self.ready.backend, self.ready.reason)
        self._set("ready", f"ready on {self.ready.backend} (fell back: {self.ready.reason})")

    async def stop(self) -> None:
        """Kill the child now (a unit in its kernel stops too); the next render starts a new one."""
        proc, self._proc, self.ready, self.loaded_scene = self._proc, None, None, None
        if proc is not None:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
            if self._proc is None:  # nobody started another meanwhile
                self._set("stopped", "stopped")

    async def _read(self) -> _Msg:
        proc = self._proc
        if proc is None:
            raise RenderError("the renderer was stopped")
        while True:
            if len(self._buf) >= HEADER.size:
                (n,) = HEADER.unpack(self._buf[: HEADER.size])
                if n > MSG_BYTES_MAX:
                    raise RenderError(f"the renderer announced a {n}-byte message")
                if len(self._buf) >= HEADER.size + n:
                    body = bytes(self._buf[HEADER.size : HEADER.size + n])
                    del self._buf[: HEADER.size + n]
                    try:
                        return _dec.decode(body)
                    except msgspec.DecodeError as exc:
                        raise RenderError(f"the renderer sent garbage: {exc}") from None
            data = await proc.stdout.receive_some(1 << 20)
            if not data:
                raise RenderError(f"the renderer exited (code {await proc.wait()})")
            self._buf += data


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="meshrender render: %(message)s", stream=sys.stderr)
    sys.exit(_child(sys.argv[1], sys.argv[2], int(sys.argv[3])))
