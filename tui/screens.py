"""Screens pushed over the app: the scene picker.

How it works
  * `ScenePicker` is a modal over the app: a tree of folders and scene files (what `load_scene`
    takes) from a starting folder; enter on a file dismisses it with that file's path, escape with
    None; backspace takes the tree up a folder. The tree reads folders in a worker of its own, so
    a slow disk never stalls the app.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DirectoryTree, Static

from .widgets import SCENE_SUFFIXES


class SceneTree(DirectoryTree):
    """Folders and scene files only; hidden entries left out."""

    def filter_paths(self, paths: Iterable[Path]) -> Iterable[Path]:
        shown = []
        for p in paths:
            if p.name.startswith("."):
                continue
            try:
                if p.is_dir() or p.suffix.lower() in SCENE_SUFFIXES:
                    shown.append(p)
            except OSError:  # unreadable: leave it out
                continue
        return shown


class ScenePicker(ModalScreen[str | None]):
    """Pick a scene file to submit, starting in `folder`."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Back"), Binding("backspace", "up", "Up a folder")]

    def __init__(self, folder: Path):
        super().__init__()
        self.folder = folder

    def compose(self) -> ComposeResult:
        with Vertical(id="picker"):
            yield Static("Pick a scene to submit: enter submits it, backspace goes up a folder, escape "
                         "goes back", id="picker-title")  # fmt: skip
            yield SceneTree(self.folder, id="picker-tree")

    def on_mount(self) -> None:
        self.query_one(SceneTree).focus()

    def action_up(self) -> None:
        tree = self.query_one(SceneTree)
        tree.path = Path(tree.path).resolve().parent

    def on_directory_tree_file_selected(self, event: DirectoryTree.FileSelected) -> None:
        event.stop()
        self.dismiss(str(event.path))
