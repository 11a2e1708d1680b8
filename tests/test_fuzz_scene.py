"""Property-based fuzzing of the scene decoders: OBJ (+ MTL), PLY, glTF and GLB, the TOML scene
file, Mitsuba XML, and images (PNG, JPEG, Radiance HDR, EXR). A fuzz target takes the bytes of one file,
writes it into a scratch scene folder beside small valid companions (a triangle OBJ, an MTL, a
PNG texture) and loads it through the real `load_scene`; a target passes when the load succeeds
or raises a MeshrenderError, and fails on anything else (a traceback, a MemoryError, ...).

Inputs are the seeds in tests/data/fuzz/scene/ mutated by Hypothesis: bytes flipped, inserted,
deleted, truncated, and "interesting" numbers spliced in (huge counts, -1, NaN, overflowing
integers, `..` and NUL). The suite runs a short, derandomized budget (the whole file < 30 s);
`bench/fuzz.py` imports `TARGETS` to run a long one.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshrender.errors import MeshrenderError
from meshrender.scene.load import load_scene

SEEDS = Path(__file__).resolve().parent / "data" / "fuzz" / "scene"
EXAMPLES = int(os.environ.get("MESHRENDER_FUZZ_EXAMPLES", "60"))  # per target in the suite
RANDOM = "MESHRENDER_FUZZ_EXAMPLES" in os.environ  # a budget given by hand: explore, not replay
TRI_OBJ = b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n"
TEXTURED = '[materials.t]\nbase_color_texture = "{image}"\n[[meshes]]\nfile = "tri.obj"\nmaterial = "t"\n'
INTERESTING = [
    b"-1", b"0", b"1", b"255", b"65535", b"2147483647", b"2147483648", b"4294967295", b"4294967296",
    b"9223372036854775808", b"99999999999999999999999", b"1e309", b"-1e309", b"nan", b"inf", b"1e-320",
    b"..", b"../", b"/", b"/etc/passwd", b"\x00", b"[", b"{", b"\xff\xff\xff\xff", b"\x00\x00\x00\x80",
    b"\xff\xff\xff\x7f", b"\x00\x00\x00\x00",
]  # fmt: skip

_scratch: Path | None = None


def scratch() -> Path:
    """One scene folder per process (on tmpfs where there is one), with the companions a fuzzed
    file may name: tri.obj, m.mtl, t.png."""
    global _scratch
    if _scratch is None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        _scratch = Path(tempfile.mkdtemp(prefix="meshrender-fuzz-", dir=base))
        (_scratch / "tri.obj").write_bytes(TRI_OBJ)
        (_scratch / "m.mtl").write_bytes((SEEDS / "seed.mtl").read_bytes())
        (_scratch / "t.png").write_bytes((SEEDS / "seed.png").read_bytes())
    return _scratch


def _load(name: str, data: bytes, companion: tuple[str, bytes] | None = None) -> None:
    d = scratch()
    path = d / name
    path.write_bytes(data)
    try:
        if companion is not None:
            (d / companion[0]).write_bytes(companion[1])
        load_scene(path)
    except MeshrenderError:
        pass
    finally:
        path.unlink(missing_ok=True)


def _textured(image: str, data: bytes) -> None:
    _load("scene.toml", TEXTURED.format(image=image).encode(), (image, data))


def fuzz_obj(data: bytes) -> None:
    _load("fuzz.obj", data)


def fuzz_mtl(data: bytes) -> None:
    _load("fuzz.obj", b"mtllib fuzz.mtl\nusemtl red\n" + TRI_OBJ, ("fuzz.mtl", data))


def fuzz_ply(data: bytes) -> None:
    _load("fuzz.ply", data)


def fuzz_gltf(data: bytes) -> None:
    _load("fuzz.gltf", data)


def fuzz_glb(data: bytes) -> None:
    _load("fuzz.glb", data)


def fuzz_toml(data: bytes) -> None:
    _load("fuzz.toml", data)


def fuzz_xml(data: bytes) -> None:
    _load("fuzz.xml", data)


def fuzz_png(data: bytes) -> None:
    _textured("fuzz.png", data)


def fuzz_jpeg(data: bytes) -> None:
    _textured("fuzz.jpg", data)


def fuzz_hdr(data: bytes) -> None:
    _textured("fuzz.hdr", data)


def fuzz_exr(data: bytes) -> None:
    _textured("fuzz.exr", data)


TARGETS = {
    "obj": fuzz_obj,
    "mtl": fuzz_mtl,
    "ply": fuzz_ply,
    "gltf": fuzz_gltf,
    "glb": fuzz_glb,
    "toml": fuzz_toml,
    "xml": fuzz_xml,
    "png": fuzz_png,
    "jpeg": fuzz_jpeg,
    "hdr": fuzz_hdr,
    "exr": fuzz_exr,
}
SEED_FILES = {
    "obj": ["seed.obj"],
    "mtl": ["seed.mtl"],
    "ply": ["seed_binary.ply", "seed_ascii.ply"],
    "gltf": ["seed.gltf"],
    "glb": ["seed.glb"],
    "toml": ["seed.toml"],
    "xml": ["seed.xml"],
    "png": ["seed.png"],
    "jpeg": ["seed.jpg"],
    "hdr": ["seed_flat.hdr", "seed_rle.hdr"],
    "exr": ["seed.exr"],
}


def seeds(kind: str) -> list[bytes]:
    return [(SEEDS / f).read_bytes() for f in SEED_FILES[kind]]


@st.composite
def mutated(draw, kind: str) -> bytes:
    """A seed of `kind` with a few random edits."""
    data = bytearray(draw(st.sampled_from(seeds(kind))))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.integers(0, 5))
        pos = draw(st.integers(0, len(data)))
        if op == 0 and data:  # overwrite a byte
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == 1:  # insert bytes
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == 2:  # delete a run
            del data[pos : pos + draw(st.integers(1, 32))]
        elif op == 3:  # truncate
            del data[pos:]
        elif op == 4:  # splice an interesting number or path piece in
            data[pos:pos] = draw(st.sampled_from(INTERESTING))
        else:  # overwrite with one (binary counts, lengths, offsets)
            word = draw(st.sampled_from(INTERESTING))
            data[pos : pos + len(word)] = word
    return bytes(data)


JSON_VALUES = [-1, 0, 1, 3, 5125, 5126, 2**31, 2**32, 2**53, 2**64, 1e308, -0.0, "../x.bin", "/etc/passwd",
               "file:///etc/passwd", "data:,", "data:application/octet-stream;base64,AAAA", "", None, True,
               [], {}, [0, 0], {"nodes": [0]}]  # fmt: skip


def _leaves(doc, path=()):
    """Every (path, value) in a JSON document, containers included."""
    yield path, doc
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for k, v in items:
        yield from _leaves(v, (*path, k))


@st.composite
def gltf_json_mutated(draw) -> bytes:
    """The glTF seed with a few values replaced where they matter: counts, offsets, indices, URIs."""
    doc = json.loads((SEEDS / "seed.gltf").read_text())
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p, _ in _leaves(doc) if p]
        path = draw(st.sampled_from(paths))
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        parent[path[-1]] = copy.deepcopy(draw(st.sampled_from(JSON_VALUES)))  # never shared: no cycles
    return json.dumps(doc).encode()


STRATEGIES = {"gltf": lambda: st.one_of(mutated("gltf"), gltf_json_mutated())}

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not RANDOM,  # the suite replays the same inputs; a hand-given budget explores
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _test(kind: str):
    @FUZZ
    @given(data=STRATEGIES.get(kind, lambda: mutated(kind))())
    def test(data: bytes) -> None:
        TARGETS[kind](data)

    test.__name__ = f"test_fuzz_{kind}"
    return test


for _kind in TARGETS:
    globals()[f"test_fuzz_{_kind}"] = _test(_kind)


def test_the_seeds_load():
    """The seeds are valid files: mutations start from inputs that reach the decoders' depths."""
    d = scratch()
    for kind, files in SEED_FILES.items():
        for f in files:
            if kind == "mtl":
                (d / "fuzz.mtl").write_bytes((SEEDS / f).read_bytes())
                load_scene(_write(d / "fuzz.obj", b"mtllib fuzz.mtl\nusemtl red\n" + TRI_OBJ))
            elif kind in ("png", "jpeg", "hdr", "exr"):
                image = "fuzz" + Path(f).suffix
                (d / image).write_bytes((SEEDS / f).read_bytes())
                scene = TEXTURED.format(image=image)
                assert (
                    load_scene(_write(d / "scene.toml", scene.encode()))
                    .meshes[0]
                    .materials[0]
                    .base_color_texture
                )
            else:
                assert load_scene(_write(d / f"fuzz{Path(f).suffix}", (SEEDS / f).read_bytes())).meshes


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
