"""What the TUI draws, apart from the app: cells of its tables, the Frame and Stream tabs'
pictures, and the scene input that completes names and paths.

How it works
  * Everything here is a pure function of the plain dicts the peer's snapshot is made of (or of
    the file system, for completion), so it is tested without an app.
  * `frame_lines` draws the bucket map with two characters per bucket, coloured by the peer
    holding it and brighter as its passes come in, and the preview with half blocks, two pixels
    per character, both scaled down to fit the room given; as segments with cached styles, which
    `FramePanel` turns into the lines Textual asks for (a styled Text of thousands of spans costs
    the event loop tens of milliseconds a second).
  * `stream_lines` draws a streaming session the same way (`preview_lines` is the picture of
    both): its version and passes, the peers of the frame shown, then the preview in the image's
    shape. `StreamPanel` is that panel with the keys that move the camera: it posts `Move`, and
    the app sends the orbit to the peer.
  * `complete_scene` gives the first built-in name, folder or scene file that begins with what
    was typed (folders end in "/"); `SceneInput` shows it greyed while typing and takes it on tab
    or right arrow.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.cells import cell_len
from rich.color import Color
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.coordinate import Coordinate
from textual.message import Message
from textual.strip import Strip
from textual.suggester import Suggester
from textual.widget import Widget
from textual.widgets import DataTable, Input

PEER_COLOURS = [(66, 133, 244), (52, 168, 83), (251, 188, 5), (171, 71, 188), (0, 172, 193), (255, 112, 67),
                (158, 157, 36), (236, 64, 122)]  # fmt: skip
SCENE_SUFFIXES = (".toml", ".xml", ".obj", ".ply", ".gltf", ".glb")  # what `load_scene` takes, besides names
STYLES_CACHED = 1 << 16  # colour styles kept: a preview's cells repeat from one second to the next
BOLD, DIM = Style(bold=True), Style(dim=True)
ASPECT_MIN = 0.01  # an image's width / height this far from square is drawn as its preview grid is
DIR_ENTRIES_MAX = 10_000  # a folder is read this far for completion, so a huge one never stalls it


def short(peer_id: str) -> str:
    return peer_id[-10:] if peer_id else "?"


def brief(value) -> str:
    """A log value as the tables show it: peer ids by their last 10 characters, hashes by their
    first 12; anything else as it is."""
    text = str(value)
    if text.startswith(("12D3Koo", "Qm")) and len(text) >= 46:
        return short(text)
    if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
        return text[:12]
    return text


def human_s(seconds: float) -> str:
    """A duration as a person reads it: 42 s, 6 min, 2 h 05."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:02.0f}"


def human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def backend_text(status: dict | None) -> Text:
    """GPU, CPU, or "CPU (fell back)" in the warning colour ("CPU (GPU out of memory)" when a GPU
    could not hold the scene); "starting" before the renderer has said; "client" for a client."""
    if not status:
        return Text("?", style="dim")
    if not status.get("renders", True):
        return Text("client", style="dim")
    if status.get("gpu") is None:
        return Text("starting", style="dim")
    if status.get("fell_back"):
        why = "GPU out of memory" if status.get("fallback") == "gpu-oom" else "fell back"
        return Text(f"CPU ({why})", style="bold yellow")
    return Text("GPU" if status.get("gpu") else "CPU", style="green" if status.get("gpu") else "")


@functools.lru_cache(maxsize=STYLES_CACHED)
def _rgb(r: int, g: int, b: int, on: tuple[int, int, int] | None = None) -> Style:
    return Style(color=Color.from_rgb(r, g, b), bgcolor=None if on is None else Color.from_rgb(*on))


Lines = list[list[Segment]]  # what a panel draws: a line of segments per row


def frame_lines(view: dict, width: int, height: int) -> Lines:
    """The Frame tab, a line of segments per row: a title (job, frame, size, the peers' colours),
    then a bucket map (each bucket coloured by the peer that holds it, brighter as its passes
    come in; dots where nobody has it yet) beside the preview drawn in half blocks, two pixels
    per character. Fits width x height cells (a grid too big for it is sampled)."""
    peers = view.get("peers", [])
    what = f"job {view['job'][:12]}  frame {view['frame']}  {view['width']}x{view['height']}  "
    if view.get("finished"):  # a finished job stays in view; its preview is the denoised frame if any
        what += "done, denoised  " if view.get("denoised") else "done  "
    title = [Segment(what, BOLD)]
    for i, p in enumerate(peers):
        title += [Segment("■ ", _rgb(*PEER_COLOURS[i % len(PEER_COLOURS)])), Segment(f"{short(p)}  ")]
    body_h = max(4, height - 1)
    lines: list[list[Segment]] = []
    if "buckets" in view:
        xs = sorted({b[0] for b in view["buckets"]})
        ys = sorted({b[1] for b in view["buckets"]})
        col_of, row_of = {x: i for i, x in enumerate(xs)}, {y: i for i, y in enumerate(ys)}
        grid = [[None] * len(xs) for _ in ys]
        for (x, y, _, _), owner, done in zip(view["buckets"], view["owner"], view["done"], strict=True):
            grid[row_of[y]][col_of[x]] = (owner, done)
        step = max(1, -(-len(xs) * 2 // max(8, width // 2)), -(-len(ys) // body_h))
        for row in grid[::step]:
            line = []
            for owner, done in row[::step]:
                if owner < 0:
                    line.append(Segment("··", DIM))
                    continue
                r, g, b = PEER_COLOURS[owner % len(PEER_COLOURS)]
                k = 0.35 + 0.65 * min(1.0, done / max(1, view["passes"]))
                line.append(Segment("██", _rgb(int(r * k), int(g * k), int(b * k))))
            lines.append(line)
    map_w = max((2 * len(line) for line in lines), default=0)
    pic = preview_lines(view["preview"], max(8, width - map_w - 2), body_h)
    out = [title]
    for i in range(max(len(lines), len(pic))):
        left = lines[i] if i < len(lines) else []
        pad = map_w - 2 * len(left)
        out.append(left + [Segment(" " * (pad + 2))] + (pic[i] if i < len(pic) else []))
    return out


def preview_lines(preview: dict, width: int, height: int, aspect: float | None = None) -> Lines:
    """A snapshot's preview ({cols, rows, rgb}: base64 of uint8 sRGB rows x cols x 3) in half
    blocks, two pixels per character, scaled down (never up) to fit width x height cells; with
    `aspect` (the image's width / height) drawn in that shape, not the preview grid's."""
    rgb = np.frombuffer(base64.b64decode(preview["rgb"]), np.uint8)
    img = rgb.reshape(preview["rows"], preview["cols"], 3)
    pw, ph = img.shape[1], img.shape[0]
    if aspect is not None and ASPECT_MIN <= aspect <= 1 / ASPECT_MIN:
        ph = max(2, round(pw / aspect))
    scale = max(pw / width, ph / (height * 2), 1.0)
    cols, rows = max(1, int(pw / scale)), max(2, int(ph / scale) // 2 * 2)
    sy = (np.arange(rows) * img.shape[0] // rows).astype(int)
    sx = (np.arange(cols) * img.shape[1] // cols).astype(int)
    small = img[sy][:, sx].tolist()
    return [
        [Segment("▀", _rgb(*top, tuple(bottom))) for top, bottom in zip(small[y], small[y + 1], strict=True)]
        for y in range(0, rows, 2)
    ]


def stream_lines(view: dict, width: int, height: int) -> Lines:
    """The Stream tab, a line of segments per row: the session (scene, version, passes of the
    version rendering and the samples they hold), the frame shown (its version and pass, the
    peers that rendered it in their colours), the last edit (bytes new in the store, compile
    time) and the answer to the last camera move; then the preview, fitted to what is left."""
    scene = Path(str(view.get("scene") or "?")).name
    head = f"{scene}  version {view.get('version', 0)}  "
    passes = f"pass {view.get('pass_done', 0)}/{view.get('pass_count', 0)}"
    size = f" ({view.get('samples', 0)} spp)  {view.get('width')}x{view.get('height')}"
    first = [Segment(head + passes, BOLD), Segment(size)]
    edit = view.get("last_edit") or {}
    if edit:
        ms = 1000 * float(edit.get("compile_s", 0.0))
        first.append(Segment(f"  edit: {human_bytes(int(edit.get('bytes_new', 0)))} new, {ms:.0f} ms", DIM))
    shown, peers = view.get("shown"), view.get("peers") or []
    said = f"version {shown.get('version')} pass {shown.get('pass_done')}  by " if shown else "nothing yet  "
    second = [Segment("shown: " + said)]
    for i, p in enumerate(peers):
        second += [Segment("■ ", _rgb(*PEER_COLOURS[i % len(PEER_COLOURS)])), Segment(f"{short(p)}  ")]
    lines = [first, second]
    answer = view.get("answer")
    if answer:
        lines.append([Segment(answer[0], Style(color="red") if answer[1] else DIM)])
    body_h = max(4, height - len(lines))
    if view.get("preview"):
        w, h = view.get("width"), view.get("height")
        aspect = w / h if isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0 else None
        lines += preview_lines(view["preview"], max(8, width), body_h, aspect)
    else:
        lines.append([Segment("no preview yet: one comes with the first whole pass", DIM)])
    return lines


def frame_text(view: dict, width: int, height: int) -> Text:
    """`frame_lines` as one rich Text (what a test or a log can print)."""
    out = Text()
    for line in frame_lines(view, width, height):
        for seg in line:
            out.append(seg.text, seg.style)
        out.append("\n")
    return out


class LiveTable(DataTable):
    """A table shown afresh every second: `show(rows)` with (key, cells) per row. When the same
    keys come in the same order only the cells that changed are updated (and the cursor stays
    where it was); otherwise the table is refilled. Refilling 1000 rows every second would cost
    the event loop a fifth of its time."""

    def __init__(self, **kwargs):
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self._shown: list[tuple[str, tuple]] = []

    def show(self, rows: list[tuple[str, tuple]]) -> None:
        changed = None
        if [k for k, _ in rows] == [k for k, _ in self._shown]:
            changed = [(i, j, a) for i, ((_, new), (_, old)) in enumerate(zip(rows, self._shown, strict=True))
                       for j, (a, b) in enumerate(zip(new, old, strict=True)) if a != b]  # fmt: skip
            # DataTable re-measures a whole column for each cell updated with update_width: a cell
            # wider than its column refills the table instead
            widths = [c.content_width for c in self.ordered_columns]
            if any(cell_len(a.plain if isinstance(a, Text) else str(a)) > widths[j] for _, j, a in changed):
                changed = None
        if changed is None:
            cursor = self.cursor_row
            self.clear()
            for key, cells in rows:
                self.add_row(*cells, key=key)
            if rows:
                self.move_cursor(row=min(max(cursor, 0), len(rows) - 1))
        else:
            for i, j, a in changed:
                self.update_cell_at(Coordinate(i, j), a)
        self._shown = rows


class FramePanel(Widget):
    """The Frame tab's picture. `show(view)` keeps the view; its lines are drawn by `draw` (view,
    width, height -> lines of segments) when Textual asks for them (never while the tab is
    hidden), at the panel's own size, once per change."""

    DEFAULT_CSS = "FramePanel { height: 1fr; width: 1fr; padding: 0 1; }"

    def __init__(self, note: str, draw: Callable[[dict, int, int], Lines] = frame_lines, **kwargs):
        super().__init__(**kwargs)
        self._view: dict | None = None
        self._note = note
        self._draw = draw
        self._drawn: tuple[tuple[int, int], list[Strip]] | None = None

    def show(self, view: dict | None, note: str = "") -> None:
        """Draw `view`, or `note` when there is none."""
        if view == self._view and note == self._note:
            return
        self._view, self._note, self._drawn = view, note, None
        self.refresh()

    def render_line(self, y: int) -> Strip:
        width, height = self.content_size
        if self._drawn is None or self._drawn[0] != (width, height):
            if self._view is None:
                lines = [[Segment(self._note, DIM)]]
            else:
                lines = self._draw(self._view, width, height)
            self._drawn = ((width, height), [Strip(line).crop_extend(0, width, None) for line in lines])
        strips = self._drawn[1]
        return strips[y] if y < len(strips) else Strip.blank(width)


YAW_STEP_DEG, PITCH_STEP_DEG = 15.0, 10.0  # an arrow key turns the camera this far about its target
DOLLY_IN, DOLLY_OUT = 0.8, 1.25  # + and - scale the distance to the target (one undoes the other)
PAN_STEP = 0.1  # shift+arrow or h/j/k/l slides camera and target this many target distances


class StreamPanel(FramePanel):
    """The Stream tab's picture (`stream_lines`), with keys that move the session's camera while
    it has the focus: each posts `Move` with the orbit to send (`StreamSession.orbit`'s fields)."""

    can_focus = True
    BINDINGS = [
        Binding("left", "move(-1, 0)", "Orbit", key_display="←→↑↓"),
        Binding("right", "move(1, 0)", "Orbit", show=False),
        Binding("up", "move(0, 1)", "Orbit", show=False),
        Binding("down", "move(0, -1)", "Orbit", show=False),
        Binding("plus,equals_sign", "dolly(-1)", "Dolly", key_display="+-"),
        Binding("minus", "dolly(1)", "Dolly", show=False),
        Binding("shift+left,h", "pan(-1, 0)", "Pan", key_display="hjkl"),
        Binding("shift+right,l", "pan(1, 0)", "Pan", show=False),
        Binding("shift+up,k", "pan(0, 1)", "Pan", show=False),
        Binding("shift+down,j", "pan(0, -1)", "Pan", show=False),
    ]

    class Move(Message):
        def __init__(self, orbit: dict):
            super().__init__()
            self.orbit = orbit

    def action_move(self, yaw: int, pitch: int) -> None:
        self.post_message(self.Move({"yaw_deg": yaw * YAW_STEP_DEG, "pitch_deg": pitch * PITCH_STEP_DEG}))

    def action_dolly(self, out: int) -> None:
        self.post_message(self.Move({"dolly": DOLLY_OUT if out > 0 else DOLLY_IN}))

    def action_pan(self, dx: int, dy: int) -> None:
        self.post_message(self.Move({"pan": [dx * PAN_STEP, dy * PAN_STEP]}))


def member_state(status: dict | None) -> str:
    """rendering, fetching (a scene's chunks) or idle; a peer from before `activity` says busy."""
    if not status:
        return "?"
    return status.get("activity") or status.get("state", "?")


def complete_scene(value: str, cwd: Path) -> str | None:
    """The first built-in scene name, folder (with a "/") or scene file whose name begins `value`,
    as `value` completed; None when nothing does. Relative paths are taken from `cwd`; hidden
    entries only when `value`'s last part begins with a dot."""
    from meshrender.scene.load import list_builtins

    if not value:
        return None
    if "/" not in value and not value.startswith("~"):
        for name in list_builtins():
            if name.startswith(value) and name != value:
                return name
    folder, slash, stem = value.rpartition("/")
    base = Path(os.path.expanduser(folder + slash if slash else "."))
    if not base.is_absolute():
        base = cwd / base
    names: list[tuple[str, bool]] = []
    try:
        with os.scandir(base) as entries:
            for i, entry in enumerate(entries):
                if i >= DIR_ENTRIES_MAX:
                    break
                name = entry.name
                if not name.startswith(stem) or (name.startswith(".") and not stem.startswith(".")):
                    continue
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    continue
                if is_dir or name.lower().endswith(SCENE_SUFFIXES):
                    names.append((name, is_dir))
    except OSError:  # no such folder, or not ours to read: nothing to complete
        return None
    for name, is_dir in sorted(names):
        done = folder + slash + name + ("/" if is_dir else "")
        if done != value:
            return done
    return None


class SceneSuggester(Suggester):
    """`complete_scene` for an Input, off the event loop (a slow disk never stalls the app)."""

    def __init__(self, cwd: Path):
        super().__init__(use_cache=False, case_sensitive=True)
        self.cwd = cwd

    async def get_suggestion(self, value: str) -> str | None:
        return await asyncio.to_thread(complete_scene, value, self.cwd)


class SceneInput(Input):
    """The scene to submit: tab completes (as right arrow does at the end), enter submits."""

    BINDINGS = [Binding("tab", "complete", "Complete", show=False)]

    def __init__(self, cwd: Path, **kwargs):
        super().__init__(suggester=SceneSuggester(cwd), **kwargs)
        self.cwd = cwd

    def action_complete(self) -> None:
        done = complete_scene(self.value, self.cwd)
        if done is None:
            self.screen.focus_next()
            return
        self.value = done
        self.cursor_position = len(done)
