"""py-libp2p's own log lines, through our logging: one line each, rate-limited.

py-libp2p 0.8.1 logs link failures from deep inside (`host/basic_host.py`: "Failed to open stream
to peer …:\n  Error: …\n  Protocols: …\n  Timeout: 30s …", seven lines per failed stream;
`transport/tcp/tcp.py`: "Failed to open TCP stream: …"), some with tracebacks. Importing
`libp2p` runs its `setup_logging()`, which (without LIBP2P_DEBUG) leaves the "libp2p" logger at
WARNING with no handler and no propagation, so every such record went to Python's last-resort
handler: raw, multi-line, on the user's terminal, however our CLI had set the level before.

`install()` (called by the CLI's logging set-up, after importing libp2p so that its set-up cannot
undo ours) gives the "libp2p" logger one handler, `OneLineHandler`: a record becomes one line
(the first line of its message, then its "Error:" and "Protocols:" details if it has them, then
the exception's type and message instead of a traceback) logged again on "meshrender.libp2p",
so it goes wherever our log goes (stderr, the TUI's log file). The same message (its text with
digits and peer ids folded) is let through at most once per REPEAT_S; the next one that gets
through says how many were held back.
"""

from __future__ import annotations

import logging
import re
import time

REPEAT_S = 10.0  # one message key at most once per this
KEYS_MAX = 512  # message keys remembered; past this the oldest are forgotten (bounded memory)
LINE_CHARS_MAX = 300  # a line longer than this is cut
LIBP2P_LEVEL = logging.ERROR  # py-libp2p's failures are shown; its warnings are chatter

_ids = re.compile(r"\b(?:12D3Koo|Qm)[1-9A-HJ-NP-Za-km-z]{20,}\b|\d+")
_detail = re.compile(r"^\s*(Error|Protocols):\s*(.*)$", re.MULTILINE)


def one_line(record: logging.LogRecord) -> str:
    """The record's message in one line: its first line, its Error/Protocols details, the exception."""
    try:
        text = record.getMessage()
    except Exception:  # a malformed record: say what we can
        text = str(record.msg)
    first, _, rest = text.partition("\n")
    parts = [first.rstrip(": ").strip()]
    parts += [f"{k.lower()} {v.strip()}" for k, v in _detail.findall(rest) if v.strip()]
    if record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        parts.append(f"{type(exc).__name__}: {exc}".replace("\n", " "))
    line = "; ".join(p for p in parts if p)
    return line if len(line) <= LINE_CHARS_MAX else line[: LINE_CHARS_MAX - 1] + "…"


def message_key(record: logging.LogRecord, line: str) -> str:
    """What counts as "the same message": the logger and the line with ids and numbers folded."""
    return f"{record.name}:{_ids.sub('#', line)[:120]}"


class OneLineHandler(logging.Handler):
    """Re-logs each record of py-libp2p as one line on `target`, at most once per key per REPEAT_S."""

    def __init__(self, target: logging.Logger, *, repeat_s: float = REPEAT_S, clock=time.monotonic):
        super().__init__()
        self.target, self.repeat_s, self.clock = target, repeat_s, clock
        self._seen: dict[str, list] = {}  # key -> [last time let through, held back since]

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = one_line(record)
            key = message_key(record, line)
            now = self.clock()
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self.repeat_s:
                seen[1] += 1
                return
            held = seen[1] if seen is not None else 0
            self._seen.pop(key, None)
            self._seen[key] = [now, 0]
            if len(self._seen) > KEYS_MAX:
                del self._seen[next(iter(self._seen))]
            if held:
                line += f" (and {held} more like it in the last {self.repeat_s:.0f}+ s)"
            self.target.log(record.levelno, "libp2p: %s", line)
        except Exception:  # logging must never raise into the library
            self.handleError(record)


def install(level: int = LIBP2P_LEVEL) -> OneLineHandler:
    """Route the "libp2p" logger through `OneLineHandler` (idempotent: an earlier one is replaced)."""
    import libp2p  # noqa: F401 - its import runs setup_logging(), which must come before ours

    lib = logging.getLogger("libp2p")
    for h in list(lib.handlers):
        lib.removeHandler(h)
    handler = OneLineHandler(logging.getLogger("meshrender.libp2p"))
    handler.setLevel(level)  # some of its modules set their own logger's level (auto_connector: INFO)
    lib.addHandler(handler)
    lib.setLevel(level)
    lib.propagate = False  # our handler re-logs it: once is enough
    return handler
