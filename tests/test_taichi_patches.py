"""kernels/taichi_patches.py: each patch is in effect, ti.funcs compile as Taichi compiles them
(a parsed tree walked again gives what a fresh parse gives), and a process without the patches
finds the very kernels a patched one cached (same offline-cache key: the same IR) and renders the
same bits.

No `from __future__ import annotations` here: Taichi reads the kernels' annotations as types."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import taichi as ti
from conftest import REPO
from taichi.lang import kernel_impl as ki
from taichi.lang.ast import ast_transformer_utils as atu

from kernels import taichi_patches
from kernels.backend import init_backend

PATCHES = ("_cheap_source_positions", "_func_trees_once", "_fast_builder_dispatch", "_cheap_inside_class")


@pytest.fixture(scope="module", autouse=True)
def cpu_backend():
    init_backend("cpu")  # the suite's in-process backend key (conftest's renderers): no re-init


def test_every_patch_is_in_effect_on_the_pinned_taichi():
    assert ti.__version__ == taichi_patches.PINNED  # the suite's Taichi: the patches must be on
    assert taichi_patches.applied() == PATCHES
    now = {
        "ASTTransformerContext.get_pos_info": atu.ASTTransformerContext.get_pos_info,
        "kernel_impl._get_tree_and_ctx": ki._get_tree_and_ctx,
        "kernel_impl.transform_tree": ki.transform_tree,
        "Builder.__call__": atu.Builder.__call__,
        "kernel_impl._inside_class": ki._inside_class,
    }
    assert now.keys() == taichi_patches.originals.keys()
    for name, fn in now.items():
        assert fn is not taichi_patches.originals[name], name
        assert fn.__module__ == "kernels.taichi_patches", name


def test_another_taichi_version_gets_no_patch(monkeypatch):
    monkeypatch.setattr(ti, "__version__", (1, 7, 5))
    assert taichi_patches.apply() == ()


@ti.func
def poly(x):
    y = x * x
    return y + 1.0


@ti.func
def nest(depth: ti.template(), x):
    """Calls itself inside its own walk (compile-time recursion): the inner calls need their own tree."""
    r = x
    if ti.static(depth > 0):
        r = nest(depth - 1, x) * 2.0
    return r


def test_a_func_walked_again_from_its_parsed_tree_computes_the_same():
    @ti.kernel
    def calls(a: ti.f32) -> ti.f32:
        return poly(a) + poly(a + 1.0) + poly(poly(a)) + nest(2, a) + nest(1, a)

    before = dict(taichi_patches.tree_stats)
    assert calls(2.0) == pytest.approx(5.0 + 10.0 + 26.0 + 8.0 + 4.0)
    parsed = taichi_patches.tree_stats["parsed"] - before["parsed"]
    reused = taichi_patches.tree_stats["reused"] - before["reused"]
    # poly: parsed once, then 3 walks reuse it (poly(poly(a)) builds its argument first); nest:
    # nest(2) parses and keeps its tree, nest(1) and nest(0) inside it are parsed fresh; the second
    # nest(1) reuses the kept tree and its nest(0) is parsed fresh
    assert (parsed, reused) == (1 + 4, 3 + 1)


@ti.dataclass
class Pair:
    a: ti.f32
    b: ti.f32

    @ti.func
    def norm(self):
        return self.a + self.b


@ti.func
def size_of(v):
    return v.norm()  # a vector's goes through matrix_ops (the node gets a `caller`), a Pair's is its own


def test_what_one_walk_leaves_on_a_tree_does_not_reach_the_next():
    @ti.kernel
    def sizes() -> ti.f32:
        return size_of(ti.Vector([3.0, 4.0])) * 10.0 + size_of(Pair(a=1.0, b=2.0))

    assert sizes() == pytest.approx(53.0)


@ti.func
def first(v):
    return v[0]


def test_a_walk_that_fails_leaves_the_tree_usable():
    @ti.kernel
    def bad(a: ti.f32) -> ti.f32:
        return first(a)  # a scalar has no [0]: fails inside first's walk

    @ti.kernel
    def good() -> ti.f32:
        return first(ti.Vector([7.0, 8.0]))

    with pytest.raises(Exception) as err:
        bad(1.0)
    assert "test_taichi_patches.py" in str(err.value) and "first" in str(err.value)
    reused = taichi_patches.tree_stats["reused"]
    assert good() == pytest.approx(7.0)
    assert taichi_patches.tree_stats["reused"] == reused + 1  # the failed walk gave its tree back


def _both(level):
    return taichi_patches.originals["kernel_impl._inside_class"](level), ki._inside_class(level)


def test_inside_class_reads_the_line_taichi_reads():
    class Plain:
        got = _both(2)

    # fmt: off
    class OneLine: got = _both(2)  # noqa: E701 (the statement's line must start with "class ")
    # fmt: on

    assert Plain.got == (False, False)
    assert OneLine.got == (True, True)
    assert _both(1) == (False, False)  # a function's frame
    assert _both(50) == (False, False)  # no such frame: both give up quietly

    @ti.data_oriented
    class Scaled:
        def __init__(self):
            self.k = 3.0

        @ti.kernel
        def times(self, x: ti.f32) -> ti.f32:  # a class kernel: `self` needs no annotation
            return x * self.k

    assert Scaled().times(2.0) == pytest.approx(6.0)


DECORATED = """
import taichi as ti


@ti.func
def module_func(x):
    return x


@ti.data_oriented
class Owner:
    @ti.kernel
    def run(self) -> ti.f32:
        return self.helper(1.0)

    @ti.func
    def helper(self, x):
        return x


@ti.dataclass
class Point:
    x: ti.f32

    @ti.func
    def twice(self):
        return self.x * 2.0
"""


def test_inside_class_answers_as_taichi_for_every_decoration_of_an_imported_module(tmp_path, monkeypatch):
    """Each @ti.func/@ti.kernel of a module imported from a file asks both versions (from the
    frame depth Taichi asks at) and they agree; some of the answers are "in a class"."""
    import importlib.util

    original, patched = taichi_patches.originals["kernel_impl._inside_class"], ki._inside_class
    answers = []

    def both(level_of_class_stackframe):  # a frame deeper than Taichi's call: look one further up
        level = level_of_class_stackframe + 1
        answers.append((original(level), patched(level)))
        return answers[-1][1]

    monkeypatch.setattr(ki, "_inside_class", both)
    path = tmp_path / "decorated_module.py"
    path.write_text(DECORATED)
    spec = importlib.util.spec_from_file_location("decorated_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert len(answers) == 4 and {a for a, _ in answers} == {True, False}, answers
    assert all(a == b for a, b in answers), answers
    assert module.Owner().run() == pytest.approx(1.0)


SAME_KERNEL = """
import hashlib, sys
import kernels.taichi_patches as tp
if sys.argv[1] == "off":
    tp.apply = lambda: ()  # Taichi's own frontend
from meshrender.render import Renderer
from meshrender.scene.compile import compile_scene
from meshrender.scene.load import load_scene
from meshrender.settings import RenderSettings
from meshrender.units import whole_frame_unit
r = Renderer(compile_scene(load_scene("cornell")), backend="cpu", threads=1)
s = RenderSettings(width=24, height=20, spp=4, pass_spp=4, max_depth=4)
u = r.render_unit(whole_frame_unit(s), s)
print(len(tp.applied()), hashlib.sha256(u.sums.tobytes() + u.aov_sums.tobytes()).hexdigest())
"""


def test_without_the_patches_taichi_finds_the_same_kernels_and_renders_the_same_bits(tmp_path):
    """The suite's cache was written by patched processes (conftest's warm_kernel_cache, 1 thread
    among them): Taichi's own frontend must hash its IR to the same keys and add nothing."""
    cache = tmp_path / "cache"
    shutil.copytree(Path(os.environ["MESHRENDER_CACHE"]), cache, ignore=shutil.ignore_patterns("*.lock"))
    kernels = sorted(p.name for p in (cache / "taichi").glob("*.tic"))
    assert kernels
    out = {}
    for mode in ("off", "on"):
        env = {**os.environ, "MESHRENDER_CACHE": str(cache)}
        run = subprocess.run([sys.executable, "-c", SAME_KERNEL, mode], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=900)  # fmt: skip
        assert run.returncode == 0, run.stderr[-2000:]
        out[mode] = run.stdout.split()
        assert sorted(p.name for p in (cache / "taichi").glob("*.tic")) == kernels, mode
    assert out["off"][0] == "0" and out["on"][0] == str(len(PATCHES))
    assert out["off"][1] == out["on"][1]
