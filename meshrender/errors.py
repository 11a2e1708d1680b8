"""Errors a user sees. Each one names the file (or thing) at fault and what is wrong with it."""

from __future__ import annotations


class MeshrenderError(Exception):
    """Base of every error meant for the user rather than a traceback."""


class SceneError(MeshrenderError):
    """A scene, mesh, texture or setting that cannot be used as given."""

    def __init__(self, source: str, problem: str):
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")


class MissingAssetsError(SceneError):
    """Every file a scene references that does not exist, listed at once."""

    def __init__(self, source: str, missing: list[str]):
        self.missing = list(missing)
        listing = "\n".join(f"  - {m}" for m in self.missing)
        super().__init__(source, f"{len(self.missing)} missing asset(s):\n{listing}")


class BackendError(MeshrenderError):
    """The requested compute backend cannot be used on this machine."""
