"""The streaming sessions one peer runs (meshrender.streaming.StreamSession adds and removes
itself): the web page's Stream view and the TUI's Stream tab show `current()`."""

from __future__ import annotations

from ..errors import MeshrenderError

SESSIONS_MAX = 8  # sessions one peer runs at once: each holds a scene description and a film


class Streams:
    """The sessions running on one peer, oldest first."""

    def __init__(self):
        self._sessions: dict = {}  # id -> StreamSession

    def add(self, session) -> None:
        if len(self._sessions) >= SESSIONS_MAX:
            raise MeshrenderError(f"this peer already runs {SESSIONS_MAX} streaming sessions")
        self._sessions[session.id] = session

    def remove(self, session) -> None:
        self._sessions.pop(session.id, None)

    def get(self, session_id: str):
        return self._sessions.get(session_id)

    def current(self):
        """The newest session still running, or None."""
        live = [s for s in self._sessions.values() if s.ended is None]
        return live[-1] if live else None

    def __iter__(self):
        return iter(list(self._sessions.values()))

    def __len__(self) -> int:
        return len(self._sessions)
