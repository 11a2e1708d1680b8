"""What the TUI draws, apart from the app: cells of its tables, the Frame tab's picture, and the
scene input that completes names and paths.

How it works
  * Everything here is a pure function of the plain dicts the peer's snapshot is made of (or of
    the file system, for completion), so it is tested without an app.
  * `frame_text` draws the bucket map with two characters per bucket, coloured by the peer holding
    it and brighter as its passes come in, and the preview with half blocks, two pixels per
    character, both scaled down to fit the room given.
  * `complete_scene` gives the first built-in name, folder or scene file that begins with what
    was typed (folders end in "/"); `SceneInput` shows it greyed while typing and takes it on tab
    or right arrow.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from rich.text import Text
from textual.binding import Binding
from textual.suggester import Suggester
from textual.widgets import Input

PEER_COLOURS = [(66, 133, 244), (52, 168, 83), (251, 188, 5), (171, 71, 188), (0, 172, 193), (255, 112, 67),
                (158, 157, 36), (236, 64, 122)]  # fmt: skip
SCENE_SUFFIXES = (".toml", ".obj", ".ply", ".gltf", ".glb")  # what `load_scene` takes, besides names
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
    """GPU, CPU, or "CPU (fell back: why)" in the warning colour; "starting" before the renderer
    has said; "no renderer" for a client."""
    if not status:
        return Text("?", style="dim")
    if not status.get("renders", True):
        return Text("client", style="dim")
    if status.get("gpu") is None:
        return Text("starting", style="dim")
    if status.get("fell_back"):
        return Text("CPU (fell back)", style="bold yellow")
    return Text("GPU" if status.get("gpu") else "CPU", style="green" if status.get("gpu") else "")


def frame_text(view: dict, width: int, height: int) -> Text:
    """The Frame tab: a bucket map (each bucket coloured by the peer that holds it, brighter as its
    passes come in; dots where nobody has it yet) beside the preview drawn in half blocks, two
    pixels per character. Fits width x height cells."""
    import base64

    import numpy as np

    peers = view.get("peers", [])
    out = Text()
    out.append(f"job {view['job'][:12]}  frame {view['frame']}  {view['width']}x{view['height']}  ", "bold")
    for i, p in enumerate(peers):
        r, g, b = PEER_COLOURS[i % len(PEER_COLOURS)]
        out.append("■ ", style=f"rgb({r},{g},{b})")
        out.append(f"{short(p)}  ")
    out.append("\n")
    lines: list[Text] = []
    if "buckets" in view:
        xs = sorted({b[0] for b in view["buckets"]})
        ys = sorted({b[1] for b in view["buckets"]})
        col_of, row_of = {x: i for i, x in enumerate(xs)}, {y: i for i, y in enumerate(ys)}
        grid = [[None] * len(xs) for _ in ys]
        for (x, y, _, _), owner, done in zip(view["buckets"], view["owner"], view["done"], strict=True):
            grid[row_of[y]][col_of[x]] = (owner, done)
        step = max(1, -(-len(xs) * 2 // max(8, width // 2)), -(-len(ys) // max(4, height - 2)))
        for row in grid[::step]:
            line = Text()
            for owner, done in row[::step]:
                if owner < 0:
                    line.append("··", style="dim")
                    continue
                r, g, b = PEER_COLOURS[owner % len(PEER_COLOURS)]
                k = 0.35 + 0.65 * min(1.0, done / max(1, view["passes"]))
                line.append("██", style=f"rgb({int(r * k)},{int(g * k)},{int(b * k)})")
            lines.append(line)
    p = view["preview"]
    img = np.frombuffer(base64.b64decode(p["rgb"]), np.uint8).reshape(p["rows"], p["cols"], 3)
    map_w = max((len(line) for line in lines), default=0)
    room_w = max(8, width - map_w - 2)
    room_h = max(4, height - 2) * 2
    scale = max(img.shape[1] / room_w, img.shape[0] / room_h, 1.0)
    cols, rows = max(1, int(img.shape[1] / scale)), max(2, int(img.shape[0] / scale) // 2 * 2)
    sy = (np.arange(rows) * img.shape[0] // rows).astype(int)
    sx = (np.arange(cols) * img.shape[1] // cols).astype(int)
    small = img[sy][:, sx]
    pic = []
    for y in range(0, rows, 2):
        line = Text()
        for x in range(cols):
            (r0, g0, b0), (r1, g1, b1) = small[y, x], small[y + 1, x]
            line.append("▀", style=f"rgb({r0},{g0},{b0}) on rgb({r1},{g1},{b1})")
        pic.append(line)
    for i in range(max(len(lines), len(pic))):
        left = lines[i] if i < len(lines) else Text(" " * map_w)
        left.pad_right(map_w - len(left))
        out.append_text(left)
        out.append("  ")
        if i < len(pic):
            out.append_text(pic[i])
        out.append("\n")
    return out


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
