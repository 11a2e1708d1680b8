"""A streaming session on a peer: the I/O edge around the sans-IO `session.SessionCore`.

`StreamSession(peer, scene, settings).run()` (in the peer's nursery) holds an editable scene
description, renders it progressively across the party and streams previews to its watchers:

  * Versions. Every edit (`set_camera`, `set_material`, `move_light`, `reload` of the scene file)
    changes the description; a compile task turns the newest description into a compiled scene
    (in a worker thread), imports it into the peer's store — only chunks the store lacks are
    new, so a camera move adds the camera chunk and the manifest — and hands the core the new
    `SceneVersion`. Edits made while one compiles coalesce: the next compile takes the newest
    description, and every edit's caller learns the version that first shows it. A camera move
    reuses the last compiled arrays with the camera row replaced (no BVH rebuild); the other edits
    compile the whole scene. An edit that fails (a half-saved file, a bad value) changes nothing:
    the session keeps rendering the version it has, and says why (`stream-edit-failed`).
  * Workers. A `crew.Crew` offers the session to every member that renders (and to our own render
    process), one job link each, as a job is offered. Each version is a `JobOffer` on the same
    link (meshrender.work: later leases render that version), sent before the first lease of a
    version to a link that has not had it. The old version's leases are revoked at once; units of
    it still in a kernel finish (one pass of one bucket) and their results are dropped as stale.
  * Results are checked as a job's are (coordinate.check_result: the unit's size, sample counts,
    finite non-negative values), then given to the core with the version of their lease; a fault
    drops the peer from the session and penalises it.
  * Previews. A watcher (`watch(name)`) gets the newest complete pass as a `StreamFrame` when it
    asks for the next one (`Watch.next`): asking again is the acknowledgement the core waits for,
    so a slow watcher gets fewer frames, never a queue.
  * The session ends on `stop`, when nobody watches or edits for the core's idle limit, or with
    the peer; its workers' links end then (the unit in a kernel finishes; no render process dies).

`peer.streams` lists the sessions running on a peer (the web page's Stream view, the TUI's
Stream tab). `meshrender.script.open_session(...)` runs a peer with one session for a script:

    async with open_session("scene.toml", home=..., party=..., secret=...) as s:
        await s.set_camera(position=(0, 1, 4))
        async for frame in s.frames():
            ...
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
import trio

from .compiled import CompiledScene
from .coordinate import check_aov, check_result
from .crew import OUTBOX_MSGS, Crew, backend_class, handle_events
from .errors import MeshrenderError
from .protocol import Beat, JobEnd, JobOffer, LeaseRefused, UnitDone
from .session import (
    LEASE_RECORDS_MAX,
    Converged,
    Ended,
    Lease,
    Penalize,
    Preview,
    Revoke,
    SceneVersion,
    SessionConfig,
    SessionCore,
)
from .settings import RenderSettings
from .store.hashing import chunk_hash
from .units import UnitResult
from .viewport import number, orbit_camera, reflectance, vec3

log = logging.getLogger("meshrender.streaming")

VERSIONS_KEPT = 16  # SceneVersions remembered by number (a lease of an older one is stale anyway)
FOV_DEG_MIN, FOV_DEG_MAX = 0.1, 179.0  # a field of view the pinhole camera can draw
IOR_MIN, IOR_MAX = 1.0, 4.0  # diamond is 2.42; nothing real refracts more than this
FIRST_PASS_HOLD_S = 1.0  # an edit waits at most this long for the current version's first whole pass
CLOSE_WAIT_S = 1.0  # an ended session's last messages (JobEnd) go out within this, then links close


def _emitting(mesh) -> np.ndarray:
    """Which of the mesh's triangles have an emitting material (a bool per triangle)."""
    emits = np.array([max(m.emission) > 0 for m in mesh.materials], bool)
    ids = np.asarray(mesh.material_ids)
    if not emits.any() or not len(ids):
        return np.zeros(len(ids), bool)
    return emits[np.clip(ids, 0, len(emits) - 1)]


def _submesh(mesh, mask: np.ndarray):
    """The triangles `mask` picks as a mesh of their own, with their own copies of the vertices."""
    used, inverse = np.unique(np.asarray(mesh.indices)[mask], return_inverse=True)

    def take(a):
        return None if a is None else np.ascontiguousarray(np.asarray(a)[used])

    return dataclasses.replace(
        mesh,
        positions=take(mesh.positions),
        indices=inverse.reshape(-1, 3).astype(np.int32),
        material_ids=np.ascontiguousarray(np.asarray(mesh.material_ids)[mask]),
        normals=take(mesh.normals),
        uvs=take(mesh.uvs),
        tangents=take(mesh.tangents),
    )


def scene_lights(desc) -> list[dict]:
    """Lights that can move: point and spot lights, then each mesh's emitting triangles (an area
    light, placed at the centroid of their vertices)."""
    out = []
    for light in desc.lights:
        if light.kind in ("point", "spot"):
            out.append({"index": len(out), "kind": light.kind, "position": list(light.position)})
    for i, mesh in enumerate(desc.meshes):
        mask = _emitting(mesh)
        if mask.any():
            used = np.unique(np.asarray(mesh.indices)[mask])
            c = np.asarray(mesh.positions, np.float64)[used].mean(axis=0)
            out.append({"index": len(out), "kind": "area", "name": mesh.name, "mesh": i,
                        "position": [round(float(x), 6) for x in c]})  # fmt: skip
    return out


def moved_light(desc, index: int, position):
    """`desc` with light `index` of `scene_lights(desc)` at `position` (an area light: its
    emitting triangles' centroid; in a mesh with other triangles, as the Cornell box's light is,
    they move as a mesh of their own). ValueError for a light that is not there."""
    pos = np.asarray(vec3("position", position), np.float64)
    lights = scene_lights(desc)
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(lights):
        raise ValueError(f"no light {index!r}: this scene has {len(lights)} that can move")
    target = lights[index]
    if target["kind"] in ("point", "spot"):
        movable = [i for i, li in enumerate(desc.lights) if li.kind in ("point", "spot")]
        i = movable[index]
        new_lights = list(desc.lights)
        new_lights[i] = dataclasses.replace(desc.lights[i], position=tuple(float(x) for x in pos))
        desc = dataclasses.replace(desc, lights=new_lights)
    else:  # the emitting triangles move; in a mesh with others (a Cornell box) they split off
        shift = (pos - np.asarray(target["position"], np.float64)).astype(np.float32)
        meshes = list(desc.meshes)
        mesh = meshes[target["mesh"]]
        mask = _emitting(mesh)
        light = mesh if mask.all() else _submesh(mesh, mask)
        light = dataclasses.replace(light, positions=np.asarray(light.positions, np.float32) + shift)
        i = target["mesh"]
        meshes[i : i + 1] = [light] if mask.all() else [_submesh(mesh, ~mask), light]
        desc = dataclasses.replace(desc, meshes=meshes)
    return desc


class StreamEnded(MeshrenderError):
    """The session ended (stopped, idle, the peer went): no more frames."""


@dataclass(frozen=True)
class StreamFrame:
    """One preview: passes 0..pass_done-1 of `version` at every pixel, rendered by `peers`."""

    session: str
    version: int
    pass_done: int
    pass_count: int
    samples: int  # samples per pixel in the image
    peers: tuple[str, ...]
    image: np.ndarray  # float32 (H, W, 3) linear mean radiance, read-only, shared
    exposure: float  # stops (the session's settings.exposure)
    at_s: float  # time.monotonic() when it was made


class Watch:
    """One watcher's view of a session: `await next()` is its newest frame. See the module docstring."""

    def __init__(self, session: StreamSession, name: str):
        self.session = session
        self.name = name
        self._frame: StreamFrame | None = None
        self._arrived = trio.Event()
        self._owed = False  # a frame was returned and not acknowledged yet
        self.closed = False

    def _deliver(self, frame: StreamFrame) -> None:
        self._frame = frame
        self._arrived.set()

    def _end(self) -> None:
        self._arrived.set()

    async def next(self) -> StreamFrame:
        """The next frame (newer than the last one returned); StreamEnded once the session ends."""
        if self.closed:
            raise StreamEnded(f"watch {self.name} is closed")
        if self._owed:
            self._owed = False
            self.session._watcher_ready(self.name)
        while self._frame is None:
            if self.session.ended is not None:
                raise StreamEnded(f"session {self.session.id} ended: {self.session.ended}")
            await self._arrived.wait()
            self._arrived = trio.Event()
        frame, self._frame = self._frame, None
        self._owed = True
        return frame

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.session._unwatch(self.name)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------- the session


class StreamSession:
    def __init__(
        self,
        peer,
        scene,
        settings: RenderSettings,
        *,
        render_self: bool | None = None,
        config: SessionConfig | None = None,
        backend: str = "any",
    ):
        from .scene.types import LoadedScene

        if not isinstance(scene, LoadedScene):
            raise TypeError(f"scene must be a LoadedScene, not {type(scene).__name__}")
        self.peer = peer
        self.id = os.urandom(8).hex()
        self.label = f"session {self.id[:8]}"
        self.settings = settings
        self.render_self = peer.render if render_self is None else render_self
        self.config = config
        self.wanted_backend = backend
        self.backend = ""
        self._desc = scene  # the newest description: what the next compile builds
        self._good = scene  # the description of the newest version (an edit that fails goes back to it)
        self._structural = False  # something besides the camera changed since the last compile began
        self._compiled: CompiledScene | None = None
        self._asked = 0  # edits made (each bumps it)...
        self._built = 0  # ...and the newest of them in a version
        self._built_event = trio.Event()
        self._edit_failed: dict[int, str] = {}  # edit number -> why it could not be compiled
        self._compile_wake = trio.Event()
        self.core: SessionCore | None = None
        self._versions: OrderedDict[int, SceneVersion] = OrderedDict()
        self._version_started = 0.0  # trio time the current version was made
        self._first_pass = trio.Event()  # set once the current version has a whole pass
        self._lease_version: OrderedDict[int, int] = OrderedDict()
        self._offered: dict[str, int] = {}  # worker -> the version its link was last offered
        self._watches: dict[str, Watch] = {}
        self._watch_seq = 0
        self._events_send, self._events_receive = trio.open_memory_channel(OUTBOX_MSGS)
        self.crew = Crew(peer, self.label, self._events_send, offer=self._offer, on_join=self._joined,
                         render_self=self.render_self)  # fmt: skip
        self.latest: StreamFrame | None = None  # the newest frame any watcher was sent
        self._preview: tuple[StreamFrame, dict] | None = None  # the snapshot's preview of `latest`
        self.converged: tuple[int, np.ndarray] | None = None  # (version, image) of the last converged
        self.last_edit: dict = {}  # what the last version's compile and import did (bytes new, seconds)
        self.ended: str | None = None
        self.started_s = time.monotonic()

    # ------------------------------------------------------------------ queries
    @property
    def version(self) -> int:
        return self.core.version if self.core is not None else 0

    def status(self) -> dict:
        """What the web page, the TUI and --json show of the session (JSON-able)."""
        core, desc = self.core, self._desc
        st = core.statistics() if core is not None else None
        cam = desc.camera
        frame = self.latest
        return {
            "id": self.id,
            "scene": desc.source,
            "version": st.version if st else 0,
            "pass_done": st.pass_done if st else 0,
            "pass_count": self.settings.pass_count,
            "samples": self.settings.pass_range(st.pass_done - 1)[1] if st and st.pass_done else 0,
            "width": self.settings.width,
            "height": self.settings.height,
            "exposure": self.settings.exposure,
            "backend": self.backend,
            "workers": sorted(self.crew.workers),
            "peers": list(frame.peers) if frame is not None else [],
            "shown": {"version": frame.version, "pass_done": frame.pass_done} if frame is not None else None,
            "converged": list(st.converged) if st else [],
            "edits": st.edits if st else 0,
            "results": dict(st.results) if st else {},
            "last_edit": dict(self.last_edit),
            "ended": self.ended,
            "camera": {"position": list(cam.position), "look_at": list(cam.look_at), "up": list(cam.up),
                       "fov_deg": cam.fov_deg},  # fmt: skip
            "materials": self._materials(),
            "lights": self._lights(),
        }

    def snapshot(self) -> dict:
        """`status()` and a small preview of the newest frame: what `Peer.snapshot` lists."""
        from .frameview import preview_json

        out = self.status()
        f = self.latest
        if f is not None and (self._preview is None or self._preview[0] is not f):
            self._preview = (f, preview_json(f.image, f.exposure))  # 160 ms at 1080p: once a frame
        out["preview"] = self._preview[1] if f is not None else None
        return out

    def _materials(self) -> list[dict]:
        seen: dict[str, dict] = {}
        for mesh in self._desc.meshes:
            for m in mesh.materials:
                if m.name not in seen:
                    seen[m.name] = {"name": m.name, "kind": m.kind, "color": list(m.base_color),
                                    "roughness": m.roughness, "ior": m.ior}  # fmt: skip
        return list(seen.values())

    def _lights(self) -> list[dict]:
        return scene_lights(self._desc)

    # ------------------------------------------------------------------ edits
    async def set_camera(self, *, position=None, look_at=None, up=None, fov_deg=None) -> int:
        """Move the camera; returns the version that shows it. ValueError names a bad value."""
        from .errors import SceneError
        from .scene.compile import camera_array

        cam = self._desc.camera
        new = dataclasses.replace(
            cam,
            position=cam.position if position is None else vec3("position", position),
            look_at=cam.look_at if look_at is None else vec3("look_at", look_at),
            up=cam.up if up is None else vec3("up", up),
            fov_deg=cam.fov_deg if fov_deg is None else number("fov_deg", fov_deg, FOV_DEG_MIN, FOV_DEG_MAX),
        )
        try:
            camera_array(new)  # position == look_at, up along the view: said now, to this caller
        except SceneError as exc:
            raise ValueError(exc.problem) from None
        return await self._edit(dataclasses.replace(self._desc, camera=new, camera_keys=[]), camera_only=True)

    async def orbit(self, *, yaw_deg: float = 0.0, pitch_deg: float = 0.0, dolly: float = 1.0,
                    pan: tuple[float, float] = (0.0, 0.0)) -> int:  # fmt: skip
        """Move the camera as a viewport does (`orbit_camera`); returns the version showing it."""
        cam = orbit_camera(self._desc.camera, yaw_deg=yaw_deg, pitch_deg=pitch_deg, dolly=dolly, pan=pan)
        return await self.set_camera(position=cam.position, look_at=cam.look_at)

    async def set_material(self, name: str, *, color=None, roughness=None, ior=None) -> int:
        """Change every material called `name`: its base colour, roughness, IOR."""
        changes = {}
        if color is not None:
            changes["base_color"] = reflectance(color)
        if roughness is not None:
            changes["roughness"] = number("roughness", roughness, 0.0, 1.0)
        if ior is not None:
            changes["ior"] = number("ior", ior, IOR_MIN, IOR_MAX)
        swapped: dict[int, object] = {}
        meshes = []
        for mesh in self._desc.meshes:
            mats = []
            for m in mesh.materials:
                if m.name == name:
                    m = swapped.setdefault(id(m), dataclasses.replace(m, **changes))
                mats.append(m)
            meshes.append(dataclasses.replace(mesh, materials=mats) if mats != mesh.materials else mesh)
        if not swapped:
            names = ", ".join(sorted({m['name'] for m in self._materials()})[:20])
            raise ValueError(f"no material called {name!r} in this scene (it has: {names})")
        return await self._edit(dataclasses.replace(self._desc, meshes=meshes))

    async def move_light(self, index: int, position) -> int:
        """Move light `index` of `status()["lights"]` to `position` (an area light: its centroid)."""
        return await self._edit(moved_light(self._desc, index, position))

    async def reload(self, scene=None) -> int:
        """The scene file changed: `scene` is its new description (loaded by the caller)."""
        from .scene.types import LoadedScene

        if not isinstance(scene, LoadedScene):
            raise TypeError(f"scene must be a LoadedScene, not {type(scene).__name__}")
        return await self._edit(scene)

    async def _edit(self, desc, *, camera_only: bool = False) -> int:
        if self.ended is not None:
            raise StreamEnded(f"session {self.id} ended: {self.ended}")
        self._desc = desc
        self._structural = self._structural or not camera_only
        self._asked += 1
        mine = self._asked
        self._compile_wake.set()
        while self._built < mine and self.ended is None:
            await self._built_event.wait()
        if mine in self._edit_failed:
            raise ValueError(self._edit_failed.pop(mine))
        if self.ended is not None and self._built < mine:
            raise StreamEnded(f"session {self.id} ended: {self.ended}")
        return self.version

    def watch(self, name: str = "watcher") -> Watch:
        """A new watcher of this session's previews (close it, or use it as a context manager)."""
        if self.ended is not None:
            raise StreamEnded(f"session {self.id} ended: {self.ended}")
        self._watch_seq += 1
        w = Watch(self, f"{name}#{self._watch_seq}")
        if self.core is not None:
            if not self.core.add_watcher(w.name, trio.current_time()):
                raise MeshrenderError(f"session {self.id} has as many watchers as it can serve")
            self._poke()
        self._watches[w.name] = w
        return w

    async def frames(self, name: str = "frames") -> AsyncIterator[StreamFrame]:
        """Every preview as it comes (the newest each time the caller is ready), until the end."""
        with self.watch(name) as w:
            while True:
                try:
                    yield await w.next()
                except StreamEnded:
                    return

    def stop(self, reason: str = "stopped") -> None:
        if self.core is not None and self.ended is None:
            self.core.stop(trio.current_time(), reason)
            self._poke()

    def _unwatch(self, name: str) -> None:
        self._watches.pop(name, None)
        if self.core is not None and self.ended is None:
            self.core.remove_watcher(name, trio.current_time())
            self._poke()

    def _watcher_ready(self, name: str) -> None:
        if self.core is not None and self.ended is None:
            self.core.watcher_ready(name, trio.current_time())
            self._poke()

    def _poke(self) -> None:
        with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
            self._events_send.send_nowait(("poke", "", None))

    # ------------------------------------------------------------------ compiling versions
    def _build(self, desc, camera_only: bool, previous: CompiledScene | None) -> tuple[CompiledScene, dict]:
        """(worker thread) The compiled scene of `desc`, imported into the store (5 ms of it is
        opening the store in this thread)."""
        from .scene.compile import camera_array, compile_scene
        from .store.chunkstore import ChunkStore
        from .store.scenes import import_scene

        t0 = time.perf_counter()
        if camera_only and previous is not None:
            arrays = {k: v for k, v in previous.arrays.items() if k != "camera_keys"}
            arrays["camera"] = camera_array(desc.camera)
            compiled = CompiledScene(source=previous.source, arrays=arrays, settings=previous.settings,
                                     mesh_names=previous.mesh_names, material_names=previous.material_names,
                                     texture_names=previous.texture_names)  # fmt: skip
        else:
            compiled = compile_scene(desc)
        t1 = time.perf_counter()
        store = self.peer.store  # a store is one thread's: this one opens its own on the same files
        with ChunkStore(store.root, quota_bytes=store.quota_bytes) as mine:
            report = import_scene(mine, compiled)
        return compiled, {
            "scene_id": report.scene_id,
            "camera_only": bool(camera_only and previous is not None),
            "compile_s": round(t1 - t0, 4),
            "import_s": round(time.perf_counter() - t1, 4),
            "bytes_new": report.new_bytes,
            "chunks_new": report.new_chunks,
            "bytes_total": report.total_bytes,
        }

    async def _compiler(self) -> None:
        while self.ended is None:
            await self._compile_wake.wait()
            self._compile_wake = trio.Event()
            while self._built < self._asked and self.ended is None:
                await self._hold_for_first_pass()
                upto, desc, camera_only = self._asked, self._desc, not self._structural
                self._structural = False
                try:
                    compiled, info = await trio.to_thread.run_sync(
                        self._build, desc, camera_only, self._compiled
                    )
                except Exception as exc:  # a bad edit: the session keeps the version it has
                    why = getattr(exc, "problem", None) or str(exc) or type(exc).__name__
                    log.warning("%s: edit %d not applied: %s", self.label, upto, why)
                    self.peer._event("stream-edit-failed", session=self.id, reason=why[:500])
                    self._edit_failed[upto] = why
                    if self._asked == upto:  # nothing newer on top of it: back to what renders
                        self._desc = self._good
                    else:
                        self._structural = True  # the newer edits compile in full, without the fast path
                    for k in [k for k in self._edit_failed if k < upto - 64]:
                        del self._edit_failed[k]  # callers long gone: bounded
                    self._finish_edit(upto)
                    continue
                self._compiled, self._good = compiled, desc
                self.peer.scene_changed()
                if self.core is not None and self.ended is None:
                    scene = SceneVersion(info["scene_id"], self.settings)
                    number = self.core.edit(scene, trio.current_time())
                    self._remember(number)
                    info["version"] = number
                    self.last_edit = info
                    self.peer._event("stream-version", session=self.id, **info)
                    self._poke()
                self._finish_edit(upto)

    async def _hold_for_first_pass(self) -> None:
        """Wait (at most FIRST_PASS_HOLD_S from the version's start) until the current version has
        a whole pass: a drag that sends a move every 50 ms would otherwise revoke every version
        before its first pass is in, and the watcher would see nothing until the drag stops.
        Edits meanwhile coalesce into the next version."""
        if self.core is None:
            return
        until = self._version_started + FIRST_PASS_HOLD_S
        while self.core.pass_done == 0 and self.ended is None and trio.current_time() < until:
            with trio.move_on_at(until):
                await self._first_pass.wait()

    def _finish_edit(self, upto: int) -> None:
        self._built = max(self._built, upto)
        self._built_event.set()
        self._built_event = trio.Event()

    def _remember(self, number: int) -> None:
        if number not in self._versions:
            self._version_started = trio.current_time()
            self._first_pass = trio.Event()
        self._versions[number] = self.core.scene
        while len(self._versions) > VERSIONS_KEPT:
            self._versions.popitem(last=False)

    # ------------------------------------------------------------------ running
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        peer = self.peer
        peer.streams.add(self)
        try:
            compiled, info = await trio.to_thread.run_sync(self._build, self._desc, False, None)
            self._compiled = compiled
            peer.scene_changed()
            self.backend = await backend_class(peer, self.wanted_backend, self.render_self, self.label)
            now = trio.current_time()
            self.core = SessionCore(SceneVersion(info["scene_id"], self.settings), now, config=self.config)
            self._remember(self.core.version)
            info["version"] = 1
            self.last_edit = info
            for w in self._watches.values():
                self.core.add_watcher(w.name, now)
            peer._event("stream-started", session=self.id, scene=self._desc.source, backend=self.backend,
                        **info)  # fmt: skip
            task_status.started(self)
            async with trio.open_nursery() as n:
                self.crew.start(n, lambda: self.ended is not None)
                n.start_soon(self._compiler)
                await self._drive()
                self.crew.send_all(JobEnd(reason=f"session ended: {self.ended}", finish_unit=True))
                await self.crew.close(CLOSE_WAIT_S)
                n.cancel_scope.cancel()
        finally:
            if self.ended is None:
                self.ended = "the peer stopped"
            for w in list(self._watches.values()):
                w._end()
            self._built_event.set()
            peer.streams.remove(self)
            peer._event("stream-ended", session=self.id, reason=self.ended)

    async def _drive(self) -> None:
        core = self.core
        while self.ended is None:
            await handle_events(self._events_receive, core.next_deadline(), self._handle)
            self._act(core.poll(trio.current_time()))
            if core.pass_done:
                self._first_pass.set()

    def _offer(self) -> JobOffer:
        return self._offer_of(self.core.version)

    def _offer_of(self, version: int) -> JobOffer:
        scene = self._versions.get(version) or self.core.scene
        job_id = chunk_hash(f"meshrender-session:{self.id}:{version}:{scene.scene_id}".encode())
        return JobOffer(job_id=job_id, scene_id=scene.scene_id, settings=self.settings, backend=self.backend,
                        interactive=True)  # fmt: skip

    def _joined(self, peer_id: str) -> None:
        self._offered[peer_id] = self.core.version  # the crew sent it the current version's offer
        self.core.add_worker(peer_id, trio.current_time())

    def _handle(self, kind: str, who: str, payload) -> None:
        core, now = self.core, trio.current_time()
        if kind == "msg":
            if who not in self.crew.workers:
                return
            if isinstance(payload, Beat):
                core.on_heartbeat(who, now, lease_ids=payload.lease_ids, samples_done=payload.samples_done,
                                  rendering=payload.rendering)  # fmt: skip
            elif isinstance(payload, UnitDone):
                self._on_unit(who, payload, now)
            elif isinstance(payload, LeaseRefused):
                core.on_refuse(who, payload.lease_id, payload.reason, now)
                self.peer._event("lease-refused", session=self.id, peer=who, reason=payload.reason)
            else:
                self._drop(who, f"sent {type(payload).__name__} on a session link", penalize=True)
        elif kind == "gone":
            self._drop(who, payload, penalize=False)

    def _on_unit(self, who: str, msg: UnitDone, now: float) -> None:
        unit = msg.unit
        try:
            sums = check_result(unit, msg.sample_counts, msg.sums, self.settings)
            aov = check_aov(unit, msg.aov_sums)
            result = UnitResult(unit=unit, sums=sums, sample_counts=list(msg.sample_counts), aov_sums=aov)
        except ValueError as exc:
            self._drop(who, f"sent a malformed result: {exc}", penalize=True)
            return
        version = self._lease_version.get(msg.lease_id, self.core.version)
        got = self.core.on_result(who, version, msg.lease_id, result, now)
        if got.fault:
            self._drop(who, got.reason, penalize=True)

    def _drop(self, who: str, reason: str, *, penalize: bool) -> None:
        if not self.crew.drop(who, reason, penalize=penalize):
            return
        self._offered.pop(who, None)
        self.core.remove_worker(who, trio.current_time(), reason)
        if penalize:
            self.peer._penalize(who, f"{self.label}: {reason}", ban=False)
        self.peer._event("worker-lost", session=self.id, peer=who, reason=reason)

    def _act(self, actions) -> None:
        now = trio.current_time()
        for a in actions:
            if isinstance(a, Lease):
                if a.peer not in self.crew.workers:
                    continue
                if self._offered.get(a.peer) != a.version:
                    self.crew.send(a.peer, self._offer_of(a.version))
                    self._offered[a.peer] = a.version
                self._lease_version[a.lease_id] = a.version
                while len(self._lease_version) > LEASE_RECORDS_MAX:
                    self._lease_version.popitem(last=False)
                self.crew.grant(a.peer, a.lease_id, a.units, a.deadline, now)
            elif isinstance(a, Revoke):
                self.crew.revoke(a.peer, a.lease_id, a.reason)
            elif isinstance(a, Penalize):
                self.crew.penalize(a.peer, a.reason, session=self.id)
                if a.peer in self.core.statistics().banned:
                    self._drop(a.peer, f"convicted: {a.reason}", penalize=False)
            elif isinstance(a, Preview):
                frame = StreamFrame(session=self.id, version=a.version, pass_done=a.pass_done,
                                    pass_count=a.pass_count, samples=a.samples, peers=a.peers, image=a.image,
                                    exposure=self.settings.exposure, at_s=time.monotonic())  # fmt: skip
                self.latest = frame
                w = self._watches.get(a.watcher)
                if w is not None:
                    w._deliver(frame)
            elif isinstance(a, Converged):
                self.converged = (a.version, a.image)
                self.peer._event("stream-converged", session=self.id, version=a.version,
                                 seconds=round(time.monotonic() - self.started_s, 3))  # fmt: skip
            elif isinstance(a, Ended):
                self.ended = a.reason
                for w in list(self._watches.values()):
                    w._end()


Session = StreamSession  # the name scripts use: `from meshrender.streaming import Session`
