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

Stopping a unit mid-kernel is killing the process (that is how a cancel stops every worker within
a second); `RenderProcess` starts a fresh one on the next request. A child that dies or answers
garbage raises RenderError and is restarted next time.
"""

from __future__ import annotations

import logging
import struct
import sys
import time
from typing import Annotated

import msgspec
import numpy as np
import trio
from msgspec import Meta

from .errors import MeshrenderError
from .settings import RenderSettings
from .units import UnitResult, WorkUnit

log = logging.getLogger("meshrender.renderproc")

HEADER = struct.Struct(">I")
MSG_BYTES_MAX = 1 << 30  # one unit's sums: a 4096^2 bucket x 8 passes x 12 bytes would be 1.6 GB
START_TIMEOUT_S = 120.0  # importing Taichi and starting a GPU backend can take a while


class RenderError(MeshrenderError):
    pass


class _Msg(msgspec.Struct, frozen=True, kw_only=True, tag_field="t"):
    pass


class Ready(_Msg, tag="ready"):
    backend: str
    is_gpu: bool
    fell_back: bool
    reason: str
    threads: int
    kernel_s: float = 0.0  # compiling the kernel (or loading it from the disk cache) at start


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


class Failed(_Msg, tag="failed"):
    reason: str


_Any = Ready | Render | Rendered | Failed
_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(_Any)


def _frame(msg: _Msg) -> bytes:
    body = _enc.encode(msg)
    return HEADER.pack(len(body)) + body


# ---------------------------------------------------------------------------- the child


def _warm_kernel(backend: str, threads: int) -> float:
    """Compile the kernel (or load it from the disk cache: about a second either way) on the
    built-in scene, before any job asks: the kernel takes the scene as array arguments, so this
    one compilation serves every scene. Returns the seconds it took; a failure here is left for the
    first real unit to report."""
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


def _child(store_root: str, backend: str, threads: int) -> int:
    from kernels.backend import BackendError

    from .render import Renderer
    from .store.chunkstore import ChunkStore, StoreError
    from .store.manifest import MissingChunksError
    from .store.scenes import load_compiled

    out = sys.stdout.buffer
    inp = sys.stdin.buffer

    def send(msg: _Msg) -> None:
        out.write(_frame(msg))
        out.flush()

    store = ChunkStore(store_root)
    loaded: tuple[str, Renderer] | None = None
    from kernels.backend import init_backend

    try:
        info = init_backend(backend, threads)
    except BackendError as exc:
        send(Failed(reason=str(exc)))
        return 2
    kernel_s = _warm_kernel(backend, threads)
    send(Ready(backend=info.name, is_gpu=info.is_gpu, fell_back=info.fell_back, reason=info.reason,
               threads=info.threads, kernel_s=kernel_s))  # fmt: skip
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
            send(Rendered(unit=req.unit, sample_counts=result.sample_counts,
                          sums=np.ascontiguousarray(result.sums).tobytes(), seconds=seconds,
                          compile_s=compile_s))  # fmt: skip
        except (MissingChunksError, StoreError, ValueError) as exc:
            send(Failed(reason=str(exc)))


# ---------------------------------------------------------------------------- the parent


class RenderProcess:
    """A render child for this peer; `render` starts one when none runs."""

    def __init__(self, store_root, *, backend: str = "auto", threads: int = 0, log_path=None):
        """`log_path`: a file the child's log lines are appended to (None: this process's stderr,
        which a full-screen app cannot share)."""
        self.store_root = str(store_root)
        self.log_path = log_path
        self.backend = backend
        self.threads = threads
        self.ready: Ready | None = None
        self.loaded_scene: str | None = None  # the scene the child has loaded and compiled for
        self._proc: trio.Process | None = None
        self._lock = trio.Lock()
        self._start_lock = trio.Lock()
        self._buf = bytearray()

    async def start(self) -> Ready:
        async with self._start_lock:  # two callers at once start one child
            return await self._start()

    async def _start(self) -> Ready:
        if self._proc is not None and self._proc.returncode is None and self.ready is not None:
            return self.ready
        cmd = [sys.executable, "-m", __name__, self.store_root, self.backend, str(self.threads)]
        if self.log_path is None:
            self._proc = await trio.lowlevel.open_process(cmd, stdin=-1, stdout=-1)  # -1: subprocess.PIPE
        else:
            with open(self.log_path, "ab") as log_file:  # the child keeps its own descriptor
                self._proc = await trio.lowlevel.open_process(cmd, stdin=-1, stdout=-1, stderr=log_file)
        self._buf = bytearray()
        with trio.move_on_after(START_TIMEOUT_S):
            msg = await self._read()
            if isinstance(msg, Failed):
                await self.stop()
                raise RenderError(f"the renderer did not start: {msg.reason}")
            if not isinstance(msg, Ready):
                await self.stop()
                raise RenderError(f"the renderer said {type(msg).__name__} instead of Ready")
            self.ready = msg
            return msg
        await self.stop()
        raise RenderError(f"the renderer did not start within {START_TIMEOUT_S:.0f} s")

    async def render(
        self, scene_id: str, settings: RenderSettings, unit: WorkUnit
    ) -> tuple[UnitResult, Rendered]:
        """Render one unit; RenderError if the scene cannot be loaded or the child dies."""
        async with self._lock:
            await self.start()
            try:
                request = Render(scene_id=scene_id, settings=settings, unit=unit)
                await self._proc.stdin.send_all(_frame(request))
                msg = await self._read()
            except (trio.BrokenResourceError, trio.ClosedResourceError, RenderError) as exc:
                await self.stop()
                raise RenderError(f"the renderer died: {exc}") from None
            if isinstance(msg, Failed):
                raise RenderError(msg.reason)
            if not isinstance(msg, Rendered) or msg.unit != unit:
                await self.stop()
                raise RenderError("the renderer answered something else than the unit asked for")
            shape = (unit.pass_count, unit.height, unit.width, 3)
            sums = np.frombuffer(msg.sums, np.float32)
            if sums.size != int(np.prod(shape)):
                await self.stop()
                raise RenderError("the renderer sent sums of the wrong size")
            self.loaded_scene = scene_id
            return UnitResult(unit=unit, sums=sums.reshape(shape), sample_counts=list(msg.sample_counts)), msg

    async def stop(self) -> None:
        """Kill the child now (a unit in its kernel stops too); the next render starts a new one."""
        proc, self._proc, self.ready, self.loaded_scene = self._proc, None, None, None
        if proc is not None:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()

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
