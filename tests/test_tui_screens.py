"""The TUI's screens, drawn from a party frozen at one moment (tests/tui_party.py): each tab and the
scene picker at 80x24, the party at a wider size, a streaming session's tab, compared with the SVGs
accepted under __snapshots__ (`pytest --snapshot-update` rewrites them after a change meant to be
seen; look at the report it writes before accepting). Then what a user does with them: completing
a scene name or path, submitting from the picker, cancelling a job chosen with the mouse, and a
camera move with nobody to take it."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import tui_party as tp
from conftest import REPO
from test_tui import cells, until

from meshrender.frameview import preview_json
from tui.app import MeshrenderApp
from tui.screens import ScenePicker, SceneTree
from tui.widgets import LiveTable, SceneInput, complete_scene

SIZE = (80, 24)  # the smallest terminal the app is laid out for


@pytest.fixture
def utc(monkeypatch):
    """The queue's times are drawn in local time: the snapshots are taken in UTC."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def party_app(tmp_path, utc):
    """An app attached to the frozen party, with its queue in a real jobs.sqlite and a folder of
    scenes to pick from."""
    home = tmp_path / "home"
    job = tp.make_queue(home)
    scenes = tmp_path / "scenes"
    shutil.copytree(REPO / "meshrender" / "data" / "cornell", scenes / "cornell")
    (scenes / "notes.txt").write_text("not a scene: the picker leaves it out\n")
    (scenes / "teapot.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")

    def attach(on_item, on_gone):
        for item in tp.events() + tp.snapshots(job):
            on_item(item)
        return lambda: None

    return MeshrenderApp(home, attach, clock=lambda: tp.NOW_S, cwd=scenes)


async def settled(pilot) -> None:
    """Both snapshots and the queue are in (they come from threads)."""
    app = pilot.app
    await until(pilot, lambda: app.snapshot.get("frames") and len(app.jobs) == 4 and len(app.log_lines) >= 5,
                10, "the party and its queue")  # fmt: skip
    await pilot.pause()


def stream_entry() -> dict:
    """A session of the party's peer as `StreamSession.snapshot()` gives it: version 3 rendering
    its second pass of four, the frame shown is version 3's first, rendered by two peers."""
    yy, xx = np.mgrid[0:96, 0:128] / np.array([96.0, 128.0])[:, None, None]
    walls = np.stack([0.7 * (xx < 0.2) + 0.3, 0.6 * (xx > 0.8) + 0.3, 0.4 + 0.0 * xx], axis=-1)
    light = (np.abs(xx - 0.5) < 0.15) & (yy < 0.06)
    image = np.where(light[..., None], 8.0, walls * (0.4 + 0.6 * yy[..., None])).astype(np.float32)
    return {
        "id": "5e55ion0deadbeef", "scene": "/home/artist/shots/cornell.toml", "version": 3, "pass_done": 1,
        "pass_count": 4, "samples": 2, "width": 128, "height": 96, "exposure": 0.0, "backend": "cpu",
        "workers": [tp.ME, tp.GPU], "peers": [tp.ME, tp.GPU], "shown": {"version": 3, "pass_done": 1},
        "converged": [1], "edits": 2, "results": {}, "ended": None,
        "last_edit": {"camera_only": True, "compile_s": 0.0042, "import_s": 0.003, "bytes_new": 1404,
                      "chunks_new": 2, "bytes_total": 250_000, "version": 3},
        "camera": {"position": [0, 1, 3.9], "look_at": [0, 1, 0], "up": [0, 1, 0], "fov_deg": 39.3},
        "materials": [], "lights": [], "preview": preview_json(image, 0.0),
    }  # fmt: skip


@pytest.fixture
def stream_app(tmp_path, utc):
    """The frozen party's app, its peer running one streaming session."""
    home = tmp_path / "stream-home"
    job = tp.make_queue(home)

    def attach(on_item, on_gone):
        for item in tp.events() + tp.snapshots(job) + [{"streams": [stream_entry()]}]:
            on_item(item)
        return lambda: None

    return MeshrenderApp(home, attach, clock=lambda: tp.NOW_S, cwd=tmp_path)


def with_party(app: MeshrenderApp, body) -> None:
    """Run `await body(pilot)` in the app at 80x24 once the party and its queue are in."""

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await settled(pilot)
            await body(pilot)

    asyncio.run(go())


def tab(key: str):
    async def run_before(pilot) -> None:
        await settled(pilot)
        await pilot.press(key)
        await pilot.pause(0.2)

    return run_before


@pytest.mark.parametrize(
    "key,name",
    [("1", "party"), ("2", "queue"), ("3", "transfers"), ("4", "log"), ("5", "frame"), ("6", "stream")],
)
def test_each_tab_at_80x24(snap_compare, party_app, key, name):
    assert snap_compare(party_app, terminal_size=SIZE, run_before=tab(key))


def test_the_party_on_a_wide_terminal_shows_why_a_gpu_fell_back(snap_compare, party_app):
    assert snap_compare(party_app, terminal_size=(132, 30), run_before=tab("1"))


def test_the_frame_on_a_big_terminal(snap_compare, party_app):
    assert snap_compare(party_app, terminal_size=(120, 40), run_before=tab("5"))


def test_a_streaming_session_at_80x24(snap_compare, stream_app):
    """The session's line (scene, version, passes, the peers of the frame shown, the last edit)
    over its preview; the footer names the keys that move the camera."""

    async def run_before(pilot) -> None:
        await tab("6")(pilot)
        await until(pilot, lambda: pilot.app.stream is not None, 10, "the session")

    assert snap_compare(stream_app, terminal_size=SIZE, run_before=run_before)


def test_a_move_without_a_session_or_a_peer_to_take_it_says_so(party_app, stream_app):
    async def body(pilot):
        await pilot.press("6", "left")
        await pilot.pause(0.2)
        return pilot.app.stream_answer

    for app, why in ((party_app, "no streaming session"), (stream_app, "takes no commands")):
        with_party(app, body)
        assert app.stream_answer is not None and why in app.stream_answer[0] and app.stream_answer[1]
        assert "stream-move-failed reason=not moved: " in app.log_lines[-1]


def test_the_scene_picker(snap_compare, party_app):
    async def run_before(pilot) -> None:
        await settled(pilot)
        await pilot.press("o")
        tree = pilot.app.screen.query_one(SceneTree)
        await until(pilot, lambda: len(tree.root.children) == 2, 10, "the picker's folder")
        await pilot.press("down", "enter")  # open the cornell folder
        await until(pilot, lambda: tree.root.children[0].children, 10, "the cornell folder")
        await pilot.pause(0.2)

    assert snap_compare(party_app, terminal_size=SIZE, run_before=run_before)


def test_the_submit_input_suggests_a_completion(snap_compare, party_app):
    async def run_before(pilot) -> None:
        await settled(pilot)
        await pilot.press("s", "t", "e")
        await until(pilot, lambda: pilot.app.query_one(SceneInput)._suggestion, 10, "a suggestion")

    assert snap_compare(party_app, terminal_size=SIZE, run_before=run_before)


# ---------------------------------------------------------------------------- what a user does
def test_completion_names_builtins_folders_and_scene_files(tmp_path):
    (tmp_path / "shots").mkdir()
    (tmp_path / "shots" / "a.toml").write_text("")
    (tmp_path / "shots" / "b.glb").write_text("")
    (tmp_path / "shots" / "a.txt").write_text("")
    (tmp_path / ".hidden").mkdir()
    assert complete_scene("corn", tmp_path) == "cornell"  # a built-in first
    assert complete_scene("sh", tmp_path) == "shots/"
    assert complete_scene("shots/", tmp_path) == "shots/a.toml"  # not a.txt: not a scene
    assert complete_scene("shots/b", tmp_path) == "shots/b.glb"
    assert complete_scene("shots/a.toml", tmp_path) is None  # already whole
    assert complete_scene(".h", tmp_path) == ".hidden/"
    assert complete_scene("x", tmp_path) is None
    assert complete_scene("nowhere/x", tmp_path) is None
    assert complete_scene(str(tmp_path / "sh"), Path("/")) == str(tmp_path / "shots") + "/"


def test_tab_completes_and_the_picker_submits_into_the_real_queue(party_app):
    """Tab completes the input; a scene picked in the file picker is compiled and queued in this
    machine's jobs.sqlite, where the queue tab shows it."""

    app = party_app

    async def body(pilot):
        await pilot.press("s", "t", "e", "tab")
        assert app.query_one(SceneInput).value == "teapot.obj"
        await pilot.press("escape")
        await pilot.press("o")
        tree = app.screen.query_one(SceneTree)
        await until(pilot, lambda: len(tree.root.children) == 2, 10, "the picker's folder")
        await pilot.press("down", "enter")
        await until(pilot, lambda: tree.root.children[0].children, 10, "the cornell folder")
        await pilot.press("down", "enter")  # cornell/cornell.toml
        await until(pilot, lambda: len(app.jobs) == 5, 60, "the picked scene in the queue")
        assert not isinstance(app.screen, ScenePicker)  # it closed on the pick
        log = "\n".join(app.log_lines)
        assert "submitted job=" in log and "cornell.toml" in log, log

    with_party(app, body)


def test_a_job_chosen_with_the_mouse_is_cancelled(party_app):
    app = party_app

    async def body(pilot):
        assert await pilot.click("#--content-tab-queue")
        await until(pilot, lambda: app.query_one("TabbedContent").active == "queue", 5, "the queue tab")
        table = app.query_one("#queue-main")
        queued = next(i for i, r in enumerate(cells(table)) if r[7] == "queued")
        assert await pilot.click("#queue-main", offset=(2, 1 + queued))  # under the header row
        assert table.cursor_row == queued
        await pilot.press("c")
        await until(pilot, lambda: any(j.state == "cancelled" for j in app.jobs), 10, "the cancel")
        assert [j.state for j in app.jobs].count("queued") == 0
        await pilot.press("1", "c")  # not on the Queue tab: cancel does nothing
        await pilot.pause(0.3)
        assert [j.state for j in app.jobs].count("running") == 1

    with_party(app, body)


def test_a_live_table_updates_changed_cells_in_place_and_keeps_the_cursor():
    from textual.app import App

    class One(App):
        def compose(self):
            yield LiveTable(id="t")

    async def go():
        app = One()
        async with app.run_test(size=SIZE) as pilot:
            table = app.query_one(LiveTable)
            table.add_columns("Peer", "State")
            table.show([("a", ("a", "idle")), ("b", ("b", "idle")), ("c", ("c", "idle"))])
            await pilot.pause()
            table.move_cursor(row=2)
            table.show([("a", ("a", "idle")), ("b", ("b", "rendering")), ("c", ("c", "idle"))])
            await pilot.pause()
            assert cells(table) == [["a", "idle"], ["b", "rendering"], ["c", "idle"]]
            assert table.cursor_row == 2
            assert table.ordered_columns[1].content_width >= len("rendering")  # wider: refilled
            table.show([("a", ("a", "idle")), ("c", ("c", "fetching"))])  # a member gone
            await pilot.pause()
            assert cells(table) == [["a", "idle"], ["c", "fetching"]] and table.cursor_row == 1

    asyncio.run(go())


def test_typing_a_scene_types_plus_and_minus(party_app):
    app = party_app

    async def body(pilot):
        await pilot.press("s", "a", "plus", "minus")
        assert app.query_one(SceneInput).value == "a+-"
        assert [j.priority for j in app.jobs] == [0, 2, 0, 0]  # no job moved
        assert app.check_action("priority", (1,)) is False

    with_party(app, body)
