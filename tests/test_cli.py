"""`meshrender render` as a user runs it: files, the JSON line, and errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from conftest import REPO
from PIL import Image

from meshrender.output import read_exr


def run_cli(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "meshrender", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_render_builtin_json_and_files(tmp_path):
    out = tmp_path / "c.png"
    p = run_cli(
        "render", "cornell", "--res", "40x32", "--spp", "4", "--backend", "cpu", "--json", "-o", str(out)
    )
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1  # exactly one JSON object on stdout
    rec = json.loads(lines[0])
    for key in ("seconds", "samples_per_second", "backend", "spp", "resolution", "mean_rgb", "outputs"):
        assert key in rec, key
    assert rec["resolution"] == [40, 32] and rec["spp"] == 4 and rec["backend"] == "x64"
    assert rec["samples_per_second"] > 0 and min(rec["mean_rgb"]) > 0.01
    assert rec["kernel_parts"] == "diffuse"  # the Cornell box's kernel: no texture, sky or other model
    assert sorted(rec["outputs"]) == sorted(str(tmp_path / f"c.{e}") for e in ("png", "exr", "json"))
    exr = read_exr(tmp_path / "c.exr")
    assert exr.shape == (32, 40, 3)
    assert np.allclose(exr.reshape(-1, 3).mean(0), rec["mean_rgb"], rtol=1e-5)
    assert Image.open(out).size == (40, 32)
    side = json.loads((tmp_path / "c.json").read_text())
    assert side["backend_info"]["fell_back"] is False and side["settings"]["spp"] == 4


def test_auto_backend_says_it_fell_back(tmp_path):
    p = run_cli("render", "cornell", "--res", "8x8", "--spp", "1", "--json", "-o", str(tmp_path / "a.exr"))
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    info = rec["backend_info"]
    if not info["is_gpu"]:  # this machine has no GPU: the record and the log say so, and why
        assert info["fell_back"] and "no GPU" in info["reason"]
        assert "no GPU" in p.stderr


def test_missing_scene_is_a_clear_error(tmp_path):
    p = run_cli("render", str(tmp_path / "nope.toml"), "--json", "-o", str(tmp_path / "x.png"))
    assert p.returncode == 2
    assert "nope.toml" in p.stderr and "Traceback" not in p.stderr
    assert "nope.toml" in json.loads(p.stdout)["error"]
    assert not list(tmp_path.iterdir())  # nothing written


def test_bad_arguments_are_refused():
    p = run_cli("render", "cornell", "--res", "12by3")
    assert p.returncode == 2 and "WxH" in p.stderr
    p = run_cli("render", "cornell", "--spp", "0")
    assert p.returncode == 2 and "at least 1" in p.stderr


def test_no_local_render_without_a_party_is_refused(tmp_path):
    p = run_cli("render", "cornell", "--no-local-render", "--json", "-o", str(tmp_path / "x.png"))
    assert p.returncode == 2 and "--no-local-render needs --party" in p.stderr and "Traceback" not in p.stderr
    assert not list(tmp_path.iterdir())  # nothing written
