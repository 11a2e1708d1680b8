"""Reading the files a scene names without letting the scene choose which file or how much.

How: a `SceneFiles` holds the scene's *root*, the real path (symlinks resolved) of the folder the
scene file (or bare mesh) lies in. Every path the scene names — glTF buffers and images, OBJ
`mtllib`s and `map_Kd` textures, the TOML's meshes, lights, textures and environment image — is
resolved with `os.path.realpath` (so `../` climbs, absolute paths and symlinks are all followed
to where they really lead) and refused unless it lands inside the root, unless the user passed
`--allow-outside`. The file is then opened by its resolved path with O_NOFOLLOW (a symlink
swapped in after the check is refused rather than followed) and O_NONBLOCK (opening a FIFO
never waits for a writer), and `fstat` on the open descriptor must show a regular file no larger
than the caller's byte budget: devices, FIFOs and sockets are refused, and a file that grows
while it is read is refused once it passes the budget, so `/dev/zero` or a FIFO can never hang
or fill memory. The file the user named themselves (the scene file, the bare mesh) is checked
the same way but is not confined: it defines the root.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from ..errors import SceneError

READ_STEP_BYTES = 16 << 20  # one read() call at most: bounds the over-read of a file that grows
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _kind(mode: int) -> str | None:
    """What a non-regular file is, for messages; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


class SceneFiles:
    """The folder tree a scene's files must come from, and the one way to read them."""

    def __init__(
        self, root: str | os.PathLike, *, allow_outside: bool = False, top: str | os.PathLike | None = None
    ):
        self.root = Path(os.path.realpath(root))
        self.allow_outside = allow_outside
        self.top = None if top is None else os.fspath(top)  # the file the user named: not confined
        self.inputs: set[str] = set()  # every file looked for or read, real paths: what `stream` watches

    @classmethod
    def beside(cls, path: str | os.PathLike, *, allow_outside: bool = False) -> SceneFiles:
        """Confined to the folder `path` lies in (a scene file's or a bare mesh's); `path` itself
        is the file the user named."""
        return cls(Path(path).parent, allow_outside=allow_outside, top=path)

    def resolve(self, path: str | os.PathLike, what: str, src: str, *, confined: bool = True) -> Path:
        """The real path of `path`; a SceneError when it leads outside the root."""
        if "\0" in os.fspath(path):
            raise SceneError(src, f"{what}: a file name with a NUL byte in it")
        real = Path(os.path.realpath(path))
        confined = confined and os.fspath(path) != self.top
        if confined and not self.allow_outside and not real.is_relative_to(self.root):
            shown = f"'{path}'" if os.fspath(real) == os.fspath(path) else f"'{path}' (really {real})"
            raise SceneError(
                src,
                f"{what} {shown} is outside the scene folder {self.root}; a scene may only read files "
                "in its own folder tree (pass --allow-outside to allow it)",
            )
        return real

    def exists(self, path: str | os.PathLike, what: str, src: str) -> bool:
        """Whether `path` is a readable regular file in the root: False when it does not exist,
        a SceneError when it leaves the root or is a device, FIFO, socket or folder."""
        real = self.resolve(path, what, src)
        self.inputs.add(os.fspath(real))
        try:
            st = os.stat(real)
        except FileNotFoundError:
            return False
        except OSError as e:
            raise SceneError(str(path), f"cannot read {what}: {e.strerror or e}") from None
        kind = _kind(st.st_mode)
        if kind is not None:
            raise SceneError(str(path), f"{what} is {kind}, not a regular file")
        return True

    def read(
        self,
        path: str | os.PathLike,
        limit: int,
        what: str,
        src: str,
        *,
        confined: bool = True,
        head: int | None = None,
    ) -> bytes:
        """The bytes of `path`: a regular file inside the root of at most `limit` bytes (only its
        first `head` bytes when given)."""
        shown = str(path)
        real = self.resolve(path, what, src, confined=confined)
        self.inputs.add(os.fspath(real))
        try:
            fd = os.open(real, _OPEN_FLAGS)
        except FileNotFoundError:
            raise SceneError(shown, f"{what} not found") from None
        except OSError as e:
            if e.errno == errno.ELOOP:  # O_NOFOLLOW: replaced by a symlink after it was resolved
                raise SceneError(shown, f"{what} became a symbolic link while it was opened") from None
            if e.errno == errno.EISDIR:
                raise SceneError(shown, f"{what} is a directory, not a regular file") from None
            raise SceneError(shown, f"cannot read {what}: {e.strerror or e}") from None
        try:
            st = os.fstat(fd)
            kind = _kind(st.st_mode)
            if kind is not None:
                raise SceneError(shown, f"{what} is {kind}, not a regular file")
            if st.st_size > limit:
                raise SceneError(shown, f"{what} is {st.st_size} bytes, more than the limit of {limit}")
            if hasattr(os, "set_blocking"):
                os.set_blocking(fd, True)
            parts: list[bytes] = []
            got = 0
            want = limit + 1 if head is None else min(head, limit + 1)
            while got < want:
                # sized by fstat (os.read allocates what it is asked for), more only if it grew
                step = max(st.st_size + 1 - got, 1 << 16)
                part = os.read(fd, min(READ_STEP_BYTES, step, want - got))
                if not part:
                    break
                parts.append(part)
                got += len(part)
            if got > limit:
                raise SceneError(shown, f"{what} grew past the limit of {limit} bytes while it was read")
            return b"".join(parts)
        except OSError as e:
            raise SceneError(shown, f"cannot read {what}: {e.strerror or e}") from None
        finally:
            os.close(fd)
