"""The TUI: it attaches to a real local peer through its status socket, shows this peer in the
party table with its backend, submits a scene that completes, shows a running job's frame and
cancels it, keeps a departed member listed as lost, shows a streaming session and moves its camera
from the keyboard, and runs in a real terminal (tmux) from `meshrender tui`. And the status
socket's commands: a camera move on a real peer's session makes a new version, garbage is
answered with an error and the peer goes on."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import trio
from conftest import REPO
from party import PeerProc
from rich.text import Text

from meshrender.local import COMMAND_BYTES_MAX, COMMANDS_PENDING_MAX, socket_path
from meshrender.node import Peer
from meshrender.settings import RenderSettings
from meshrender.streaming import StreamSession, orbit_camera
from tui.app import MeshrenderApp, attach_or_start
from tui.widgets import DOLLY_IN, PITCH_STEP_DEG, YAW_STEP_DEG, backend_text

CORNELL = REPO / "meshrender" / "data" / "cornell"


def small_scene(tmp_path: Path, name: str, res: int, spp: int, denoise: bool = False) -> Path:
    """The built-in Cornell box at another size, as a scene file of its own."""
    folder = tmp_path / name
    shutil.copytree(CORNELL, folder)
    toml = folder / "cornell.toml"
    text = toml.read_text().replace("resolution = [256, 256]", f"resolution = [{res}, {res}]")
    toml.write_text(text.replace("spp = 64", f"spp = {spp}" + ("\ndenoise = true" if denoise else "")))
    return toml


async def until(pilot, check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.2)


def cells(table) -> list[list[str]]:
    rows = (table.get_row_at(i) for i in range(table.row_count))
    return [[c.plain if isinstance(c, Text) else str(c) for c in row] for row in rows]


def test_backend_text_says_when_a_gpu_fell_back():
    assert backend_text({"gpu": True, "renders": True}).plain == "GPU"
    assert backend_text({"gpu": False, "fell_back": False, "renders": True}).plain == "CPU"
    fell = backend_text({"gpu": False, "fell_back": True, "reason": "out of memory", "renders": True})
    assert fell.plain == "CPU (fell back)" and "yellow" in str(fell.style)
    assert backend_text({"gpu": None, "renders": True}).plain == "starting"
    assert backend_text({"renders": False}).plain == "client"


def test_a_departed_member_stays_listed_as_lost(tmp_path):
    member = {"status": {"gpu": True, "state": "busy", "threads": 8, "renders": True, "units": 7}}
    items = [
        {"snapshot": {"peer_id": "me" * 20, "party": "p", "members": {"other" * 8: member}, "transfers": {}}},
        {"snapshot": {"peer_id": "me" * 20, "party": "p", "members": {}, "transfers": {}}},
    ]

    def attach(on_item, on_gone):
        for item in items:
            on_item(item)
        return lambda: None

    async def go():
        app = MeshrenderApp(tmp_path, attach)
        async with app.run_test(size=(100, 30)) as pilot:
            table = app.query_one("#party-main")
            await until(pilot, lambda: "other" * 8 in app.lost, 10, "the second snapshot")
            await pilot.pause(0.1)
            rows = cells(table)
            assert len(rows) == 2
            assert rows[1][0] == "  " + ("other" * 8)[-10:] and rows[1][1] == "GPU" and rows[1][6] == "lost"
            assert rows[1][5] == "7"

    asyncio.run(go())


def test_without_a_peer_the_app_says_so_and_stays_open(tmp_path):
    async def go():
        app = MeshrenderApp(tmp_path, attach_or_start(tmp_path, None))
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.gone_reason, 10, "the detach message")
            assert "cannot attach" in app.gone_reason
            await pilot.press("4")
            assert app.query_one("TabbedContent").active == "log"

    asyncio.run(go())


@pytest.mark.slow
def test_the_tui_attaches_to_a_real_peer_submits_watches_and_cancels(tmp_path):
    home = tmp_path / "home"
    peer = PeerProc(home, "--threads", "1")
    small = small_scene(tmp_path, "small", 32, 8, denoise=True)
    big = small_scene(tmp_path, "big", 128, 4096)
    try:

        async def go():
            app = MeshrenderApp(home, attach_or_start(home, None))
            async with app.run_test(size=(110, 30)) as pilot:
                party = app.query_one("#party-main")
                await until(pilot, lambda: app.snapshot.get("peer_id") == peer.peer_id, 30, "the snapshot")
                await until(pilot, lambda: party.row_count >= 1, 10, "the party table")
                me = cells(party)[0]
                assert me[0] == "▸ " + peer.peer_id[-10:]  # this peer, marked
                await until(pilot, lambda: cells(party)[0][1] in ("CPU", "CPU (fell back)", "GPU"), 60,
                            "the renderer's backend")  # fmt: skip
                # a long job: submitted, picked up, then cancelled from the queue tab
                await pilot.press("s")
                await pilot.press(*str(big), "enter")
                queue = app.query_one("#queue-main")
                await until(pilot, lambda: app.jobs and app.jobs[0].state == "running", 120, "the job to run")
                # its frame fills in: buckets owned by this peer, passes coming in
                def frame() -> dict:
                    return (app.snapshot.get("frames") or [{}])[0]

                await until(pilot, lambda: sum(frame().get("done", [])) > 0, 60, "a pass in the frame view")
                await until(pilot, lambda: cells(party)[0][6] == "rendering", 30, "this peer rendering")
                view = frame()
                assert view["job"] == app.jobs[0].id and view["peers"] == [peer.peer_id]
                await pilot.press("5")
                await pilot.pause(1.2)
                assert "frame 0" in app.query_one("#frame-main").render_line(0).text
                await pilot.press("2")
                await pilot.press("c")
                await until(pilot, lambda: app.jobs[0].state == "cancelled", 10, "the cancel")
                # a short one, watched to the end
                await pilot.press("s")
                await pilot.press(*str(small), "enter")
                await until(pilot, lambda: any(j.state == "done" for j in app.jobs), 120, "the small job")
                states = {row[7] for row in cells(queue)}
                assert states == {"done", "cancelled"}, states
                # the finished frame stays in view, as its denoised image
                done_job = next(j for j in app.jobs if j.state == "done")
                await until(pilot, lambda: frame().get("job") == done_job.id and frame().get("denoised"), 10,
                            "the denoised frame in view")  # fmt: skip
                await pilot.press("5")
                await pilot.pause(1.2)
                assert "done, denoised" in app.query_one("#frame-main").render_line(0).text
                log = "\n".join(app.log_lines)
                assert "job-started" in log and "job-done" in log and "submitted" in log

        asyncio.run(go())
    finally:
        peer.stop()


@pytest.mark.slow
def test_meshrender_tui_runs_in_a_terminal_and_quits(tmp_path):
    """A smoke test in a real terminal: `meshrender tui` starts its own peer, draws the party,
    and quits on q, leaving no socket behind."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    home = tmp_path / "home"
    session = f"meshrender-test-{os.getpid()}"
    cmd = f"cd {REPO} && {sys.executable} -m meshrender tui --home {home} --threads 1"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "100", "-y", "30", cmd], check=True)
    try:
        deadline = time.monotonic() + 90
        screen = ""
        while time.monotonic() < deadline:
            screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                                    text=True).stdout  # fmt: skip
            if "party solo" in screen and ("CPU" in screen or "GPU" in screen):
                break
            time.sleep(0.5)
        assert "party solo" in screen and "Peer" in screen and "Backend" in screen, screen
        assert "Queue" in screen and "Frame" in screen
        assert "meshrender render" not in screen  # the render child's log lines go to tui.log
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            has = subprocess.run(["tmux", "has-session", "-t", session], capture_output=True)
            alive = has.returncode == 0
            if not alive:
                break
            time.sleep(0.3)
        assert not alive, "the app did not quit on q"
        assert not (home / "peer.sock").exists()
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


# ---------------------------------------------------------------------------- streaming sessions
STREAM_SECRET = b"a-good-long-secret"
STREAM_SETTINGS = RenderSettings(width=32, height=24, spp=4, pass_spp=1, max_depth=4, bucket_px=16)
SOCKET_S_MAX = 60  # a peer, a compiled Cornell box and a few camera-only versions


class Reader:
    """A reader of a peer's status socket on trio: lines out, JSON objects in."""

    def __init__(self, stream):
        self.stream = stream
        self.buf = b""

    @classmethod
    async def attach(cls, path) -> Reader:
        reader = cls(await trio.open_unix_socket(str(path)))
        await reader.send(b'{"watch": true}')
        assert "snapshot" in await reader.item()
        return reader

    async def send(self, *lines: bytes) -> None:
        await self.stream.send_all(b"".join(line + b"\n" for line in lines))

    async def item(self) -> dict:
        while b"\n" not in self.buf:
            data = await self.stream.receive_some(1 << 16)
            assert data, "the peer closed the socket"
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    async def answers(self, count: int) -> list[dict]:
        """The next `count` answers to commands, in the order they come (events and snapshots skipped)."""
        out = []
        while len(out) < count:
            item = await self.item()
            if "stream-result" in item or "error" in item:
                out.append(item)
        return out

    async def stream_status(self, session_id: str, version: int) -> dict:
        """The session's entry in the first `streams` item showing `version` or later."""
        while True:
            item = await self.item()
            for s in item.get("streams", []):
                if s["id"] == session_id and s["version"] >= version:
                    return s


def orbit(line: dict) -> bytes:
    return json.dumps(line).encode()


def test_a_move_on_the_status_socket_makes_a_version_and_garbage_is_refused(tmp_path):
    """A real peer (no renderer: the versions are what is looked at) with a real session of the
    Cornell box, its status socket read and written as the TUI does."""
    from meshrender.scene.load import load_scene
    from meshrender.scene.types import CameraDesc

    desc = load_scene("cornell")
    home = tmp_path / "home"
    peer = Peer(home=home, party="p", secret=STREAM_SECRET, render=False, local_socket=socket_path(home))
    out: dict = {}

    def camera(c: dict) -> CameraDesc:
        return CameraDesc(position=tuple(c["position"]), look_at=tuple(c["look_at"]), up=tuple(c["up"]))

    def move(sid: str, **orbit_fields) -> bytes:
        return orbit({"stream": {"session": sid, "orbit": orbit_fields}})

    async def main():
        async with trio.open_nursery() as n:
            await n.start(peer.run)
            session = StreamSession(peer, desc, STREAM_SETTINGS)
            await n.start(session.run)
            sid = session.id
            with trio.fail_after(SOCKET_S_MAX):
                r = await Reader.attach(socket_path(home))
                before = (await r.stream_status(sid, 1))["camera"]
                # one arrow key: a new version whose camera turned about the same target
                await r.send(move(sid, yaw_deg=15))
                [answer] = await r.answers(1)
                assert answer == {"stream-result": {"session": sid, "version": 2}}
                out["moved"] = (before, (await r.stream_status(sid, 2))["camera"])
                # garbage: each line answered with an error, nothing moved
                garbage = [
                    b"x" * (COMMAND_BYTES_MAX + 10),  # too long: skipped unread
                    b"not json",
                    b"\xff\xfe\x00",
                    b"[" * 3000,
                    b'{"watch": true}',  # not a command once watching
                    b'{"stream": {"session": "%s", "orbit": {"yaw_deg": 1e999}}}' % sid.encode(),
                    b'{"stream": {"session": "%s", "orbit": {"pan": [0.1, "left"]}}}' % sid.encode(),
                    b'{"stream": {"session": "%s", "orbit": {"dolly": 0}}}' % sid.encode(),
                    b'{"stream": {"session": "%s", "orbit": {"yaw_deg": true}}}' % sid.encode(),
                    b'{"stream": {"session": "%s", "orbit": {"roll": 5}}}' % sid.encode(),
                    move("0" * 16, yaw_deg=15),  # no such session
                    b'{"stream": {"session": "%s", "orbit": {"yaw_deg": 1%s}}}' % (sid.encode(), b"0" * 4000),
                ]
                await r.send(*garbage)
                answers = await r.answers(len(garbage))
                out["garbage"] = answers
                assert session.version == 2 and session.ended is None
                # the peer goes on: the same reader moves it again, a second reader attaches
                await r.send(move(sid, pitch_deg=10, dolly=0.8))
                assert (await r.answers(1))[0]["stream-result"]["version"] == 3
                r2 = await Reader.attach(socket_path(home))
                # four key presses at once: answered each, applied in order, merged where exact
                presses = [move(sid, yaw_deg=15)] * 3 + [move(sid, pan=[0.1, 0.0])]
                start = (await r2.stream_status(sid, 3))["camera"]
                await r2.send(*presses)
                got = await r2.answers(len(presses))
                assert all("stream-result" in a for a in got), got
                last = got[-1]["stream-result"]["version"]
                out["pressed"] = (start, (await r2.stream_status(sid, last))["camera"])
                # a flood: every line answered, those beyond what waits refused as busy
                flood = [move(sid, yaw_deg=1), move(sid, pan=[0.01, 0.0])] * 8  # nothing merges
                await r2.send(*flood)
                flooded = await r2.answers(len(flood))
                out["flood"] = flooded
                assert session.ended is None
                await r.stream.aclose()
                await r2.stream.aclose()
                out["watchers"] = len(peer.watchers)
                await trio.sleep(1.5)  # past a snapshot: writing to a reader that left ends only its watch
                out["watchers_after"] = len(peer.watchers)
            n.cancel_scope.cancel()

    trio.run(main)
    before, after = out["moved"]
    assert after["position"] == pytest.approx(list(orbit_camera(camera(before), yaw_deg=15).position))
    assert after["look_at"] == before["look_at"] and after["position"] != before["position"]
    assert all(set(a) == {"error"} for a in out["garbage"]), out["garbage"]
    said = [a["error"] for a in out["garbage"]]
    assert "over 4096 bytes" in said[0] and "not a command" in said[1]
    assert "yaw_deg" in said[5] and "pan" in said[6] and "dolly" in said[7] and "roll" in said[9]
    assert "no streaming session" in said[10]
    # the four presses: three turns then a pan, as if each had been a version of its own
    start, end = out["pressed"]
    cam = camera(start)
    for _ in range(3):
        cam = orbit_camera(cam, yaw_deg=15)
    cam = orbit_camera(cam, pan=(0.1, 0.0))
    assert end["position"] == pytest.approx(list(cam.position), abs=1e-9)
    assert end["look_at"] == pytest.approx(list(cam.look_at), abs=1e-9)
    busy = [a for a in out["flood"] if "busy" in a.get("error", "")]
    assert busy and len(out["flood"]) - len(busy) >= COMMANDS_PENDING_MAX, out["flood"]
    assert out["watchers_after"] == 0  # readers that left are gone from the peer


def test_the_stream_tab_shows_the_session_and_its_keys_move_the_camera(tmp_path):
    """The app attached to a real peer (in a thread, on trio, as `meshrender stream` runs one)
    with a session: the Stream tab shows its scene and version; arrows, + and h move the camera,
    each a new version the tab shows; + there is a dolly, not a job's priority."""
    from meshrender.scene.load import load_scene
    from meshrender.scene.types import CameraDesc

    desc = load_scene("cornell")
    home = tmp_path / "home"
    ready, box = threading.Event(), {}

    async def peer_main():
        peer = Peer(home=home, party="p", secret=STREAM_SECRET, render=False, local_socket=socket_path(home))
        async with trio.open_nursery() as n:
            box["token"], box["scope"] = trio.lowlevel.current_trio_token(), n.cancel_scope
            await n.start(peer.run)
            box["session"] = await n.start(StreamSession(peer, desc, STREAM_SETTINGS).run)
            ready.set()

    thread = threading.Thread(target=trio.run, args=(peer_main,), daemon=True)
    thread.start()
    try:
        assert ready.wait(SOCKET_S_MAX), "the peer and its session did not start"
        session = box["session"]

        async def go():
            app = MeshrenderApp(home, attach_or_start(home, None))
            async with app.run_test(size=(100, 30)) as pilot:
                panel = app.query_one("#stream-main")

                def line(y: int) -> str:
                    return panel.render_line(y).text

                await until(pilot, lambda: app.stream is not None, 20, "the session in a snapshot")
                await pilot.press("6")
                await pilot.pause(0.2)
                assert app.focused is panel
                assert line(0).startswith("builtin:cornell") and "version 1  pass 0/4" in line(0), line(0)
                start = app.stream["camera"]
                await pilot.press("left")  # the camera goes left about the target
                await until(pilot, lambda: "version 2" in line(0), 10, "the version of the move")
                assert "moved: version 2 shows it" in line(2), line(2)
                turned = app.stream["camera"]
                await pilot.press("up", "plus", "h")
                await until(pilot, lambda: app.stream["version"] >= 5, 10, "three more moves")
                assert session.ended is None
                return start, turned, app.stream["camera"]

        start, turned, end = asyncio.run(go())
    finally:
        if "token" in box:
            trio.from_thread.run_sync(box["scope"].cancel, trio_token=box["token"])
        thread.join(timeout=15)

    def camera(c: dict) -> CameraDesc:
        return CameraDesc(position=tuple(c["position"]), look_at=tuple(c["look_at"]), up=tuple(c["up"]))

    cam = orbit_camera(camera(start), yaw_deg=-YAW_STEP_DEG)
    assert turned["position"] == pytest.approx(list(cam.position)) and turned["look_at"] == start["look_at"]
    cam = orbit_camera(cam, pitch_deg=PITCH_STEP_DEG)
    cam = orbit_camera(cam, dolly=DOLLY_IN)
    cam = orbit_camera(cam, pan=(-0.1, 0.0))
    assert end["position"] == pytest.approx(list(cam.position))
    assert end["look_at"] == pytest.approx(list(cam.look_at))


@pytest.mark.slow
def test_meshrender_tui_moves_the_camera_of_meshrender_stream(tmp_path):
    """The user's path: `meshrender stream cornell` in one process, the TUI attached to its home:
    the Stream tab draws the rendered preview; a key press is a new version, rendered by the
    party (here the streamer alone) and drawn in its turn."""
    home = tmp_path / "home"
    stream = ("--threads", "1", "--backend", "cpu", "--res", "48x32", "--spp", "6", "--pass-spp", "1",
              "--tile", "16", "--no-web", "--no-watch", "--json")  # fmt: skip
    streamer = PeerProc(home, *stream, command=("stream", "cornell"))
    try:
        streamer.wait_for("stream-started", timeout=120)

        async def go():
            app = MeshrenderApp(home, attach_or_start(home, None))
            async with app.run_test(size=(100, 30)) as pilot:
                panel = app.query_one("#stream-main")

                def text() -> str:
                    return "\n".join(panel.render_line(y).text for y in range(panel.content_size.height))

                await until(pilot, lambda: (app.stream or {}).get("preview"), 120, "a rendered preview")
                await pilot.press("6")
                drawn = lambda: "shown: version 1" in text() and "▀" in text()  # noqa: E731
                await until(pilot, drawn, 10, "the preview drawn")
                await pilot.press("right")
                await until(pilot, lambda: "shown: version 2" in text(), 60, "the moved camera's frame")
                assert "moved: version 2 shows it" in text()

        asyncio.run(go())
        streamer.wait_for("preview", timeout=30, version=2)  # the streamer's own report agrees
    finally:
        streamer.stop()
