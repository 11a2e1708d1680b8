"""Shared test fixtures. Every render here runs on the CPU backend, in this process, once per
backend key (re-initialising Taichi would invalidate other renderers' device arrays)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"  # every file a test reads is in the repository (each folder's ORIGIN.md)
CORNELL_DIR = DATA / "cornell_mitsuba"
CORNELL_REF = CORNELL_DIR / "reference_4096spp_boxfilter.exr"
BUNNY = DATA / "bunny" / "bunny.ply"
TEXTURED = DATA / "textured_gltf" / "textured.gltf"  # tests/textured.py made it
BIG_TEXTURE_PX = (2048, 1024)  # noise base colour textures: 5 x 6 MiB of texels, about 90 chunks

# keep test kernels out of the user's cache but shared across the test run's processes
os.environ.setdefault("MESHRENDER_CACHE", str(REPO / ".pytest_cache" / "meshrender"))


# The thread counts the suite's renderers run with: in this process (0, Taichi's default) and in
# its peers and CLI runs (--threads 1). Taichi keys its kernel cache by thread count and writes
# it only when a runtime ends cleanly, so each is compiled once, up front, by a process that exits.
WARM_THREADS = (0, 1)
WARM = """
import sys
from meshrender.render import Renderer
from meshrender.scene.compile import compile_scene
from meshrender.scene.load import load_scene
Renderer(compile_scene(load_scene("cornell")), backend="cpu", threads=int(sys.argv[1])).warm_up()
"""


@pytest.fixture(scope="session", autouse=True)
def warm_kernel_cache():
    """Compile the kernel into the shared test cache before any test: a cold compile takes
    minutes on 2 cores, and peers started at once would each compile it (and be killed before
    writing it) while their tests wait on them."""
    import fcntl
    import subprocess
    import sys

    # pytest-xdist runs this once per worker: the first to take the lock compiles, the others then
    # find the cache warm (a second load costs about a second) instead of compiling beside it
    cache = Path(os.environ["MESHRENDER_CACHE"])
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "warm.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        procs = [
            subprocess.Popen([sys.executable, "-c", WARM, str(t)], cwd=REPO, stdout=subprocess.DEVNULL)
            for t in WARM_THREADS
        ]
        for p in procs:
            p.wait(timeout=1800)


def write(tmp_path: Path, name: str, text: str) -> Path:
    """Write a text file under tmp_path (creating folders); returns its path."""
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


@pytest.fixture(scope="session")
def renderer_for():
    """Build (and cache per scene object) a CPU Renderer."""
    from meshrender.render import Renderer

    cache = {}

    def make(scene):
        key = id(scene)
        if key not in cache:
            cache[key] = (scene, Renderer(scene, backend="cpu"))
        return cache[key][1]

    return make


@pytest.fixture(scope="session")
def cornell():
    from meshrender.scene.compile import compile_scene
    from meshrender.scene.load import load_scene

    return compile_scene(load_scene("cornell"))


@pytest.fixture(scope="session")
def big_textured(tmp_path_factory) -> Path:
    """The textured asset with 2048x1024 noise textures: a scene of many content-defined chunks
    (about 32 MB) for the store and swarm tests, written once per run; returns the .gltf path."""
    from textured import write_textured

    return write_textured(tmp_path_factory.mktemp("big_textured"), texture_px=BIG_TEXTURE_PX)
