"""The `meshrender` TUI: this machine's peer, its party, its queue and what it moves, live.

How it works
  * It attaches to the peer running on this machine through its status socket
    (`meshrender.local`), or starts one in a thread of its own (trio, as `meshrender peer` runs
    it) and attaches to that. Either way the app only receives plain dicts, the snapshots and
    events the headless peer's JSON output is made of, through `call_from_thread`: nothing in the
    app ever waits on the peer.
  * The queue is read from and written to `jobs.sqlite`, as `meshrender submit`/`cancel` do
    without `--to`; the peer's queue runner picks changes up within half a second. Compiling a
    submitted scene runs in a worker thread.
  * Tabs: Party (every member: backend, with a GPU that fell back to the CPU in the warning colour
    and why, speed, threads, load, units, state; members that leave stay listed as lost), Queue
    (priority, progress, ETA; submit, cancel, reprioritise), Transfers (bytes per member and in
    all), Log (the event stream), Frame (a job's buckets and preview), Stream (the newest running
    streaming session's preview, version and passes; arrows orbit its camera, + and - dolly,
    shift+arrows or h/j/k/l pan: each key is a command on the status socket, answered with the
    version that shows it).
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.css.query import NoMatches
from textual.widgets import DataTable, Footer, Header, Input, RichLog, Static, TabbedContent, TabPane

from .screens import ScenePicker
from .widgets import (
    FramePanel,
    LiveTable,
    SceneInput,
    StreamPanel,
    backend_text,
    brief,
    human_bytes,
    human_s,
    member_state,
    short,
    stream_lines,
)

REFRESH_S = 1.0  # the queue is re-read this often
LOG_LINES = 2000
NO_FRAME = "no job has been coordinated here yet; a job's frame shows while it renders, and after"
NO_STREAM = "No streaming session on this peer: `meshrender stream SCENE` runs one"


class MeshrenderApp(App):
    """See the module docstring. `attach(on_item, on_gone)` connects to the peer (it is called in
    a worker thread and may start one) and returns a function that detaches; when that has a
    `send(command) -> bool` too (an `Attached`), the Stream tab's keys send their commands by it."""

    TITLE = "meshrender"
    CSS_PATH = "app.tcss"
    # the tabs' keys are shown on the tabs themselves, leaving the footer room at 80 columns
    BINDINGS = [
        Binding("1", "tab('party')", "Party", show=False),
        Binding("2", "tab('queue')", "Queue", show=False),
        Binding("3", "tab('transfers')", "Transfers", show=False),
        Binding("4", "tab('log')", "Log", show=False),
        Binding("5", "tab('frame')", "Frame", show=False),
        Binding("6", "tab('stream')", "Stream", show=False),
        Binding("s", "submit", "Submit"),
        Binding("o", "pick", "Open file"),
        Binding("c", "cancel_job", "Cancel"),
        Binding("plus,equals_sign", "priority(1)", "Pri+"),
        Binding("minus", "priority(-1)", "Pri-"),
        Binding("q", "quit", "Quit"),
        Binding("escape", "leave_input", "Back", show=False),
    ]
    QUEUE_ACTIONS = ("cancel_job", "priority")  # only on the Queue tab, where the job chosen is seen

    def __init__(self, home: Path, attach: Callable, *, submit: Callable | None = None,
                 clock: Callable[[], float] = time.time, cwd: Path | None = None):  # fmt: skip
        """`clock` gives the wall time for ETAs and the log (a test fixes it); `cwd` is where
        relative scene paths and the file picker start."""
        super().__init__()
        self.home = Path(home)
        self._attach = attach
        self._submit = submit
        self.clock = clock
        self.cwd = Path.cwd() if cwd is None else Path(cwd)
        self._detach: Callable[[], None] | None = None
        self.snapshot: dict = {}
        self.lost: dict[str, float] = {}  # members seen once and gone since, with when
        self.seen: dict[str, dict | None] = {}  # every member ever seen, with its last status
        self.jobs: list = []
        self.gone_reason = ""
        self._detaching = False
        self.log_lines: deque[str] = deque(maxlen=LOG_LINES)  # what the Log tab shows, as text
        self.stream: dict | None = None  # the session the Stream tab shows (its snapshot entry)
        self.stream_answer: tuple[str, bool] | None = None  # the last move's answer, and if it failed

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("attaching to this machine's peer…", id="summary")
        with TabbedContent(initial="party"):
            with TabPane("1 Party", id="party"):
                yield LiveTable(id="party-main")
            with TabPane("2 Queue", id="queue"):
                with Vertical():
                    yield LiveTable(id="queue-main")
                    hint = "scene to submit: .toml, mesh or built-in name; tab completes"
                    yield SceneInput(self.cwd, id="submit", placeholder=hint)
            with TabPane("3 Transfers", id="transfers"):
                with Vertical():
                    yield Static("", id="transfers-summary")
                    yield LiveTable(id="transfers-main")
            with TabPane("4 Log", id="log"):
                yield RichLog(id="log-main", max_lines=LOG_LINES, wrap=True)
            with TabPane("5 Frame", id="frame"):
                yield FramePanel(NO_FRAME, id="frame-main")
            with TabPane("6 Stream", id="stream"):
                yield StreamPanel(NO_STREAM, stream_lines, id="stream-main")
        yield Footer()

    def on_mount(self) -> None:
        # columns that fit 80 cells; the one that may run long (why, a job's error) comes last
        self.query_one("#party-main", DataTable).add_columns(
            "Peer", "Backend", "Speed", "Threads", "Load", "Units", "State", "Why"
        )
        self.query_one("#queue-main", DataTable).add_columns(
            "Job", "Scene", "Frames", "Pri", "Progress", "ETA", "Submitted", "State"
        )
        transfers = self.query_one("#transfers-main", DataTable)
        transfers.add_columns("Peer", "Fetching", "Serving", "Received", "Sent")
        self._queue = QueueThread(self.home, lambda jobs: self._from_thread(self._show_jobs, jobs),
                                  lambda what: self._from_thread(self._queue_failed, what))  # fmt: skip
        self._queue.start()
        self._queue.do(None)
        self.run_worker(self._connect, thread=True, name="attach")

    def _connect(self) -> None:
        try:
            self._detach = self._attach(self._item_from_thread, self._gone_from_thread)
        except Exception as exc:  # no peer, and none could be started: say so and stay open
            self.call_from_thread(self._gone, f"cannot attach to a peer: {exc}")

    def _from_thread(self, fn, *args) -> None:
        if self._detaching or not self.is_running:
            return
        try:
            self.call_from_thread(fn, *args)
        except RuntimeError:  # the app has stopped
            pass

    def _item_from_thread(self, item: dict) -> None:
        self._from_thread(self.apply, item)

    def _gone_from_thread(self, reason: str) -> None:
        self._from_thread(self._gone, reason)

    def on_unmount(self) -> None:
        self._detaching = True  # the threads stop sending; one already sending may still race
        self._queue.stop()
        if self._detach is not None:
            self._detach()

    # ------------------------------------------------------------------ what comes in
    def apply(self, item: dict) -> None:
        """One snapshot or event from the peer."""
        if "snapshot" in item:
            self._snapshot(item["snapshot"])
        elif "streams" in item:
            self._streams(item["streams"])
        elif "event" in item:
            self._log(item)
        elif "stream-result" in item:
            self._answer(f"moved: version {item['stream-result'].get('version')} shows it", False)
        elif "error" in item:  # a command refused
            self._answer(f"not moved: {item['error']}", True)

    def _gone(self, reason: str) -> None:
        self.gone_reason = reason
        try:
            self.query_one("#summary", Static).update(Text(f"detached: {reason}", style="bold red"))
        except NoMatches:  # the app is closing: the watcher ends with it
            return
        self._log({"event": "detached", "t": self.clock(), "reason": reason})

    def _snapshot(self, snap: dict) -> None:
        self.snapshot = snap
        members = snap.get("members", {})
        now = self.clock()
        for p, m in members.items():
            self.seen[p] = m.get("status")
            self.lost.pop(p, None)
        for p in self.seen:
            if p not in members:
                self.lost.setdefault(p, now)
        me = snap.get("status") or {}
        t = snap.get("transfers", {})
        self.sub_title = f"party {snap.get('party', '?')} · {short(snap.get('peer_id', ''))}"
        summary = Text.assemble(
            (short(snap.get("peer_id", "")), "bold"),
            f"  party {snap.get('party', '?')}  ·  ",
            backend_text(me),
            f"  ·  {len(members)} members  ·  in {human_bytes(t.get('bytes_in', 0))}"
            f"  out {human_bytes(t.get('bytes_out', 0))}",
        )
        self.query_one("#summary", Static).update(summary)
        self._party_table(snap, me)
        self._transfer_table(snap)
        self._frame(snap)
        self._streams(snap.get("streams") or [])

    def _party_table(self, snap: dict, me: dict) -> None:
        members = [(snap.get("peer_id", ""), me, "this peer")]
        members += [(p, m.get("status"), "") for p, m in sorted(snap.get("members", {}).items())]
        members += [(p, self.seen.get(p), "lost") for p in sorted(self.lost)]
        rows = []
        for peer, st, note in members:
            me = note == "this peer"
            st = st or {}
            state = note if note == "lost" else member_state(st)
            speed = st.get("speed")
            cells = (
                Text(("▸ " if me else "  ") + short(peer), style="bold" if me else ""),
                backend_text(st) if st else Text("?", style="dim"),
                "-" if speed is None else f"{speed:.1f} Ms/s",
                str(st.get("threads", "?")),
                str(st.get("load", "?")),
                str(st.get("units", 0)),
                Text(state, style="red" if note == "lost" else ""),
                Text(st.get("reason", "") if st.get("fell_back") else "", style="yellow"),
            )
            rows.append((peer, cells))
        self.query_one("#party-main", LiveTable).show(rows)

    def _frame(self, snap: dict) -> None:
        frames = snap.get("frames") or []
        self.query_one("#frame-main", FramePanel).show(frames[0] if frames else None, NO_FRAME)

    def _streams(self, streams: list) -> None:
        running = [s for s in streams if isinstance(s, dict) and s.get("ended") is None]
        self.stream = running[-1] if running else None  # the newest, as the web page's Stream view
        self._show_stream()

    def _answer(self, text: str, failed: bool) -> None:
        self.stream_answer = (text, failed)
        if failed:
            self._log({"event": "stream-move-failed", "t": self.clock(), "reason": text})
        self._show_stream()

    def _show_stream(self) -> None:
        view = None if self.stream is None else {**self.stream, "answer": self.stream_answer}
        self.query_one("#stream-main", StreamPanel).show(view, NO_STREAM)

    def on_stream_panel_move(self, message: StreamPanel.Move) -> None:
        """A key on the Stream tab: the move goes to the peer, which answers with the version."""
        if self.stream is None:
            self._answer("not moved: no streaming session runs on this peer", True)
            return
        send = getattr(self._detach, "send", None)
        command = {"stream": {"session": self.stream["id"], "orbit": message.orbit}}
        if send is None or not send(command):
            self._answer("not moved: the peer takes no commands now (detached, or moves are queued)", True)

    def _transfer_table(self, snap: dict) -> None:
        rows = []
        fetching = serving = 0
        for p, m in sorted(snap.get("members", {}).items()):
            fetching += m.get("chunks_fetching", 0)
            serving += m.get("chunks_serving", 0)
            cells = (
                short(p),
                count(m.get("chunks_fetching", 0)),
                count(m.get("chunks_serving", 0)),
                human_bytes(m.get("bytes_received", 0)),
                human_bytes(m.get("bytes_served", 0)),
            )
            rows.append((p, cells))
        t = snap.get("transfers", {})
        got, sent = human_bytes(t.get("bytes_in", 0)), human_bytes(t.get("bytes_out", 0))
        rows.append(("", (Text("all", style="bold"), count(fetching), count(serving), got, sent)))
        self.query_one("#transfers-main", LiveTable).show(rows)
        self.query_one("#transfers-summary", Static).update(
            f"Fetching/Serving: chunks in flight now.  In all: {t.get('chunks_in', 0)} chunks "
            f"received, {t.get('chunks_out', 0)} sent."
        )

    def _log(self, ev: dict) -> None:
        when = datetime.datetime.fromtimestamp(ev.get("t", self.clock())).strftime("%H:%M:%S")
        rest = " ".join(f"{k}={brief(v)}" for k, v in ev.items() if k not in ("event", "t"))
        style = "yellow" if ev["event"] in ("penalty", "worker-lost", "job-failed", "detached") else ""
        line = Text.assemble((when, "dim"), " ", (ev["event"], "bold " + style), " ", rest)
        self.log_lines.append(line.plain)
        self.query_one("#log-main", RichLog).write(line)

    # ------------------------------------------------------------------ the queue
    def refresh_jobs(self) -> None:
        """Have the queue thread read the queue again now (it does every REFRESH_S anyway)."""
        self._queue.do(None)

    def _queue_failed(self, what: str) -> None:
        self.query_one("#summary", Static).update(Text(what, style="bold red"))

    def _show_jobs(self, jobs: list) -> None:
        self.jobs = jobs
        rows = []
        now = self.clock()
        for r in self.jobs:
            done, total = r.units_done, r.units_total
            progress = f"{done}/{total} {100 * done // total}%" if total else "-"
            eta = "-"
            if r.state == "running" and r.started_s and done and total:
                eta = human_s((now - r.started_s) * (total - done) / done)
            style = {"failed": "red", "cancelled": "dim", "done": "green", "running": "bold"}.get(r.state, "")
            cells = (
                r.id[:8],
                r.spec.scene_id[:8],
                f"{r.spec.first_frame}..{r.spec.last_frame}",
                str(r.priority),
                progress,
                eta,
                datetime.datetime.fromtimestamp(r.submitted_s).strftime("%H:%M:%S"),
                Text(r.state + (f": {r.error}" if r.error else ""), style=style),
            )
            rows.append((r.id, cells))
        self.query_one("#queue-main", LiveTable).show(rows)

    def _selected_job(self) -> str | None:
        table = self.query_one("#queue-main", DataTable)
        if not self.jobs or table.cursor_row < 0:
            return None
        return self.jobs[min(table.cursor_row, len(self.jobs) - 1)].id

    def action_tab(self, tab: str, focus: str = "") -> None:
        # focus leaves the pane first: a focused widget in a hidden pane would pull its tab back
        self.set_focus(None)
        self.query_one(TabbedContent).active = tab
        self.call_after_refresh(self.query_one(focus or f"#{tab}-main").focus)

    def action_submit(self) -> None:
        self.action_tab("queue", "#submit")

    def action_pick(self) -> None:
        self.action_tab("queue")
        self.push_screen(ScenePicker(self.cwd), self._picked)

    def _picked(self, path: str | None) -> None:
        if path:
            self._submit_from_ui(path)

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        """Cancel and priority act on the job under the Queue tab's cursor: shown only there, and
        not while a scene is typed. Over the scene picker, only quitting."""
        if isinstance(self.screen, ScenePicker):
            return action == "quit"
        if action in self.QUEUE_ACTIONS:
            if isinstance(self.focused, Input):  # typing a scene: + and - are characters
                return False
            try:
                return self.query_one(TabbedContent).active == "queue"
            except NoMatches:
                return False
        return True

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id == "stream":  # reached with the mouse too: the arrows move the camera, not the tabs
            self.call_after_refresh(self.query_one("#stream-main").focus)
        self.refresh_bindings()

    def on_descendant_focus(self, event) -> None:
        self.refresh_bindings()

    def action_leave_input(self) -> None:
        self.query_one("#queue-main", DataTable).focus()

    def on_input_submitted(self, message: Input.Submitted) -> None:
        scene = message.value.strip()
        self.action_leave_input()
        if not scene:
            return
        message.input.value = ""
        self._submit_from_ui(scene)

    def _submit_from_ui(self, scene: str) -> None:
        # a relative path is taken from where the app started, as the CLI would take it
        path = Path(scene).expanduser()
        if not path.is_absolute() and (self.cwd / path).exists():
            scene = str(self.cwd / path)
        self._log({"event": "submitting", "t": self.clock(), "scene": scene})
        self.run_worker(lambda: self._submit_scene(scene), thread=True, name="submit")

    def _submit_scene(self, scene: str) -> None:
        try:
            info = (self._submit or submit_scene)(self.home, scene)
        except Exception as exc:  # a bad scene: its message, nothing queued
            self.call_from_thread(self._log, {"event": "submit-failed", "t": self.clock(), "scene": scene,
                                              "reason": str(exc)})  # fmt: skip
            return
        self.call_from_thread(self._log, {"event": "submitted", "t": self.clock(), "job": info.id})
        self.refresh_jobs()

    def action_cancel_job(self) -> None:
        job = self._selected_job()
        if job is not None:
            self._log({"event": "cancel", "t": self.clock(), "job": job})
            self._queue.do(lambda db: db.cancel(job, now=time.time()), f"cancel {job[:12]}")

    def action_priority(self, delta: int) -> None:
        job = self._selected_job()
        if job is not None:
            bump = lambda db: db.set_priority(job, db.get(job).priority + delta)  # noqa: E731
            self._queue.do(bump, f"priority {job[:12]}")


def count(n: int) -> str:
    return str(n) if n else "-"


class QueueThread:
    """This machine's queue, read and changed on a thread of its own with one connection, so a
    busy or locked `jobs.sqlite` never stalls the app: `do(fn)` runs `fn(db)` there, then the queue
    is read again; it is also read every REFRESH_S. `show(jobs)` and `failed(message)` are called
    on that thread (the app passes them through call_from_thread)."""

    def __init__(self, home: Path, show: Callable[[list], None], failed: Callable[[str], None]):
        import queue

        self.home, self.show, self.failed = home, show, failed
        self._todo: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="meshrender-queue", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def do(self, fn: Callable | None, what: str = "") -> None:
        self._todo.put((fn, what))

    def stop(self) -> None:
        self._todo.put(None)

    def _run(self) -> None:
        import queue

        from meshrender.cli_common import local_db
        from meshrender.service import listing

        try:
            db = local_db(self.home)
        except Exception as exc:
            self.failed(f"queue unreadable: {exc}")
            return
        with db:
            while True:
                try:
                    item = self._todo.get(timeout=REFRESH_S)
                except queue.Empty:
                    item = (None, "")
                if item is None:
                    return
                fn, what = item
                try:
                    if fn is not None:
                        fn(db)
                    self.show(listing(db))
                except Exception as exc:  # a locked or broken queue, a job gone: show it, go on
                    self.failed(f"{what or 'queue'}: {exc}")


def submit_scene(home: Path, scene: str):
    """Compile `scene` and queue it here with its own settings and frame range."""
    from meshrender.cli_common import submit_compiled
    from meshrender.scene.compile import compile_scene
    from meshrender.scene.load import load_scene

    compiled = compile_scene(load_scene(scene))
    return submit_compiled(home, compiled, compiled.settings, compiled.frames, submitter="tui")


# ---------------------------------------------------------------------------- attaching
ATTACH_START_S = 60.0  # a peer started here serves its socket within this (imports, key, store)
ATTACH_BUSY_S = 15.0  # another process's peer holds the home: its socket should come within this


class Attached:
    """What `attach_or_start`'s attach returns: calling it detaches; `send(command)` hands a
    command to the peer (never blocking; False when it cannot be sent now)."""

    def __init__(self, stop: Callable[[], None], send: Callable[[dict], bool]):
        self.stop = stop
        self.send = send

    def __call__(self) -> None:
        self.stop()


def attach_or_start(home: Path, start_peer: Callable[[], Callable[[], None]] | None):
    """An `attach` for MeshrenderApp: watch the peer serving `home`'s socket; when none answers
    and `start_peer` is given, start one (it returns its stopper) and watch that. When another
    process's peer holds the home's lock (it is starting, or serves no socket, as `render --party`
    does), start none: wait a little for its socket, then say which process has the home. A peer
    holds the lock before it serves its socket (it says "listening" first, too), so a TUI opened
    while the peer starts waits for it rather than saying no peer is there."""
    from meshrender.home import HomeLock
    from meshrender.local import LocalWatch, socket_path

    def attach(on_item, on_gone):
        path = socket_path(home)
        watch = LocalWatch(path, on_item, on_gone)
        try:
            watch.start()
            return Attached(watch.stop, watch.send)
        except OSError:
            busy = HomeLock.in_use(home)
            if start_peer is None and busy is None:
                raise
        stop_peer = start_peer() if busy is None else (lambda: None)
        deadline = time.monotonic() + (ATTACH_START_S if busy is None else ATTACH_BUSY_S)
        while True:
            try:
                watch.start()
                break
            except OSError:
                if time.monotonic() > deadline:
                    stop_peer()
                    if busy is not None:
                        raise busy from None
                    raise
                time.sleep(0.1)

        def detach():
            watch.stop()
            stop_peer()

        return Attached(detach, watch.send)

    return attach


def peer_in_thread(make_peer: Callable[[], object]) -> Callable[[], None]:
    """Run a Peer on trio in a thread of its own; returns a function that stops it and waits."""
    import trio

    token: dict = {}
    ready = threading.Event()

    async def main():
        peer = make_peer()
        async with trio.open_nursery() as n:
            token["token"] = trio.lowlevel.current_trio_token()
            token["scope"] = n.cancel_scope
            ready.set()
            await peer.run()

    def run():
        from meshrender.home import HomeInUse

        try:
            trio.run(main)
        except* HomeInUse as group:  # lost a race for the home: attach waits for the winner's socket
            logging.getLogger("tui").warning("%s", group.exceptions[0])
        finally:
            ready.set()

    thread = threading.Thread(target=run, name="meshrender-peer", daemon=True)
    thread.start()
    ready.wait()

    def stop():
        if "token" in token:
            try:
                trio.from_thread.run_sync(token["scope"].cancel, trio_token=token["token"])
            except trio.RunFinishedError:
                pass
        thread.join(timeout=15.0)

    return stop
