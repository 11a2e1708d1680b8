"""Writes the malformed-input corpus of scene files beside this script (run it to regenerate).

Each case is a folder holding one entry file (what `load_scene` is given: `scene.*` or a bare
mesh) and whatever it names; `outside/` holds the files that cases try to reach from outside
their folder. `CASES` maps a case to its entry file and what must happen: "refused" with a
phrase the one error must contain, or "accepted". Files are small (the largest is a few KB);
the cases that need size, a FIFO, a device or a symlink are made at test time by
`tests/test_scene_hostile.py`.

    .venv/bin/python tests/data/hostile/make.py
"""

from __future__ import annotations

import base64
import json
import shutil
import struct
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRI_OBJ = "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n"
TRI_F32 = struct.pack("<9f", 0, 0, 0, 1, 0, 0, 0, 1, 0)

# case -> (entry file, "refused" | "accepted", phrase the error must contain)
CASES: dict[str, tuple[str, str, str]] = {}


ROOT = HERE  # where `write` puts the corpus


def case(name: str, entry: str, outcome: str = "refused", phrase: str = "") -> Path:
    CASES[name] = (entry, outcome, phrase)
    d = ROOT / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def png(width: int, height: int, idat: bytes = b"", color_type: int = 2) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg_declaring(height: int, width: int) -> bytes:
    """A tiny real JPEG whose frame header claims another size."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8), (90, 90, 90)).save(out, "JPEG")
    data = bytearray(out.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gltf(buffers, accessors, views, extra=None, mesh_attrs=None) -> str:
    doc = {
        "asset": {"version": "2.0"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": mesh_attrs or {"POSITION": 0}}]}],
        "accessors": accessors,
        "bufferViews": views,
        "buffers": buffers,
    }
    doc.update(extra or {})
    return json.dumps(doc)


def ubyte_positions(uri: str, length: int = 4096) -> str:
    """The issue's exfiltration: any file's bytes as UNSIGNED_BYTE VEC3 positions."""
    n = length // 3
    return gltf(
        [{"uri": uri, "byteLength": length}],
        [{"bufferView": 0, "componentType": 5121, "count": n, "type": "VEC3"}],
        [{"buffer": 0, "byteLength": n * 3}],
    )


def ply_header(fmt: str, elements: list[tuple[str, int, list[str]]]) -> bytes:
    lines = ["ply", f"format {fmt} 1.0"]
    for name, count, props in elements:
        lines.append(f"element {name} {count}")
        lines += [f"property {p}" for p in props]
    return ("\n".join(lines + ["end_header"]) + "\n").encode()


XYZ = ["float x", "float y", "float z"]
FACE = ["list uchar int vertex_indices"]
TRI_FACE = struct.pack("<B3i", 3, 0, 1, 2)


def write(root: Path = HERE) -> dict[str, tuple[str, str, str]]:
    """Write the corpus under `root` (replacing the case folders there); returns CASES."""
    global ROOT
    ROOT = root
    CASES.clear()
    for d in root.iterdir():
        if d.is_dir() and not d.name.startswith("__"):
            shutil.rmtree(d)
    out = root / "outside"
    out.mkdir()
    (out / "secret.bin").write_bytes(bytes(range(256)) * 16)
    (out / "tri.obj").write_text(TRI_OBJ)
    (out / "tex.png").write_bytes(png(1, 1, zlib.compress(b"\x00\xff\x00\x00")))

    # ------------------------------------------------------------------ glTF: confinement
    (case("gltf_absolute_uri", "scene.gltf", phrase="outside the scene folder") / "scene.gltf").write_text(
        ubyte_positions("/etc/passwd")
    )
    (case("gltf_dotdot_uri", "scene.gltf", phrase="outside the scene folder") / "scene.gltf").write_text(
        ubyte_positions("../outside/secret.bin")
    )
    (case("gltf_dotdot_encoded", "scene.gltf", phrase="outside the scene folder") / "scene.gltf").write_text(
        ubyte_positions("%2E%2E/outside/secret.bin")
    )
    (case("gltf_file_scheme", "scene.gltf", phrase="not supported") / "scene.gltf").write_text(
        ubyte_positions("file:///etc/passwd")
    )
    (case("gltf_file_scheme_short", "scene.gltf", phrase="not supported") / "scene.gltf").write_text(
        ubyte_positions("file:../outside/secret.bin")
    )
    (case("gltf_remote_uri", "scene.gltf", phrase="not supported") / "scene.gltf").write_text(
        ubyte_positions("https://example.com/secret.bin")
    )
    d = case("gltf_image_dotdot", "scene.gltf", phrase="outside the scene folder")
    (d / "tri.bin").write_bytes(TRI_F32)
    (d / "scene.gltf").write_text(
        gltf(
            [{"uri": "tri.bin", "byteLength": 36}],
            [{"bufferView": 0, "componentType": 5126, "count": 3, "type": "VEC3"}],
            [{"buffer": 0, "byteLength": 36}],
            extra={
                "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "material": 0}]}],
                "materials": [{"pbrMetallicRoughness": {"baseColorTexture": {"index": 0}}}],
                "textures": [{"source": 0}],
                "images": [{"uri": "../outside/tex.png"}],
            },
        )
    )
    data_uri = "data:application/octet-stream;base64," + base64.b64encode(TRI_F32).decode()
    (case("gltf_data_uri_ok", "scene.gltf", "accepted") / "scene.gltf").write_text(
        gltf(
            [{"uri": data_uri, "byteLength": 36}],
            [{"bufferView": 0, "componentType": 5126, "count": 3, "type": "VEC3"}],
            [{"buffer": 0, "byteLength": 36}],
        )
    )
    # ------------------------------------------------------------------ glTF: budgets
    (case("gltf_zero_accessor_huge", "scene.gltf", phrase="no bufferView") / "scene.gltf").write_text(
        gltf([], [{"componentType": 5126, "count": 200_000_000, "type": "VEC3"}], [])
    )
    (case("gltf_accessor_past_view", "scene.gltf", phrase="past the end") / "scene.gltf").write_text(
        gltf(
            [{"uri": data_uri, "byteLength": 36}],
            [{"bufferView": 0, "componentType": 5126, "count": 100_000_000, "type": "VEC3"}],
            [{"buffer": 0, "byteLength": 36}],
        )
    )
    (case("gltf_view_past_buffer", "scene.gltf", phrase="out of range") / "scene.gltf").write_text(
        gltf(
            [{"uri": data_uri, "byteLength": 36}],
            [{"bufferView": 0, "componentType": 5126, "count": 3, "type": "VEC3"}],
            [{"buffer": 0, "byteOffset": 1 << 40, "byteLength": 36}],
        )
    )
    (case("gltf_buffer_too_short", "scene.gltf", phrase="truncated") / "scene.gltf").write_text(
        gltf(
            [{"uri": data_uri, "byteLength": 1 << 31}],
            [{"bufferView": 0, "componentType": 5126, "count": 3, "type": "VEC3"}],
            [{"buffer": 0, "byteLength": 36}],
        )
    )
    (case("gltf_node_cycle", "scene.gltf", phrase="cycle") / "scene.gltf").write_text(
        gltf(
            [{"uri": data_uri, "byteLength": 36}],
            [{"bufferView": 0, "componentType": 5126, "count": 3, "type": "VEC3"}],
            [{"buffer": 0, "byteLength": 36}],
            extra={"nodes": [{"mesh": 0, "children": [1]}, {"children": [0]}]},
        )
    )
    (case("gltf_deep_json", "scene.gltf", phrase="glTF") / "scene.gltf").write_text(
        '{"asset": {"version": "2.0"}, "nodes": [{"extensions": {"x": ' + "[" * 3000 + "]" * 3000 + "}}]}"
    )
    (case("gltf_not_json", "scene.gltf", phrase="invalid glTF JSON") / "scene.gltf").write_bytes(
        b"\x00\xff" * 64
    )
    (case("glb_truncated", "scene.glb", phrase="truncated GLB") / "scene.glb").write_bytes(
        b"glTF" + struct.pack("<II", 2, 1 << 30) + struct.pack("<II", 1 << 29, 0x4E4F534A) + b"{}"
    )
    (case("glb_tiny", "scene.glb", phrase="GLB") / "scene.glb").write_bytes(b"glTF\x02\x00")
    # ------------------------------------------------------------------ OBJ
    d = case("obj_mtllib_passwd", "scene.obj", phrase="outside the scene folder")
    (d / "scene.obj").write_text("mtllib ../../etc/passwd\nusemtl x\n" + TRI_OBJ)
    d = case("obj_mtllib_dotdot", "scene.obj", phrase="outside the scene folder")
    (d / "scene.obj").write_text("mtllib ../outside/secret.bin\n" + TRI_OBJ)
    d = case("obj_map_kd_outside", "scene.obj", phrase="outside the scene folder")
    (d / "scene.obj").write_text("mtllib m.mtl\nusemtl red\n" + TRI_OBJ)
    (d / "m.mtl").write_text("newmtl red\nKd 1 0 0\nmap_Kd ../outside/tex.png\n")
    d = case("obj_map_kd_absolute", "scene.obj", phrase="outside the scene folder")
    (d / "scene.obj").write_text("mtllib m.mtl\nusemtl red\n" + TRI_OBJ)
    (d / "m.mtl").write_text("newmtl red\nmap_Kd /etc/passwd.png\n")
    d = case("obj_mtllib_inside_ok", "scene.obj", "accepted")
    (d / "scene.obj").write_text("mtllib sub/../m.mtl\nusemtl red\n" + TRI_OBJ)
    (d / "m.mtl").write_text("newmtl red\nKd 1 0 0\n")
    (case("obj_index_huge", "scene.obj", phrase="out of range") / "scene.obj").write_text(
        "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 99999999999999999\n"
    )
    (case("obj_index_overflow", "scene.obj", phrase="line 4") / "scene.obj").write_text(
        "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 999999999999999999999999999\n"
    )
    (case("obj_garbage", "scene.obj", phrase="line 1") / "scene.obj").write_bytes(b"\x00\x01\x02 garbage\n")
    (case("obj_no_faces", "scene.obj", phrase="no faces") / "scene.obj").write_text("v 0 0 0\n")
    (case("obj_nan", "scene.obj", phrase="NaN") / "scene.obj").write_text(
        "v nan 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n"
    )
    (case("obj_binary_junk", "scene.obj", phrase="scene.obj") / "scene.obj").write_bytes(
        bytes(range(256)) * 4
    )
    # ------------------------------------------------------------------ PLY
    verts = struct.pack("<9f", 0, 0, 0, 1, 0, 0, 0, 1, 0)
    d = case("ply_extra_element_2e29_rows", "scene.ply", phrase="rows")
    (d / "scene.ply").write_bytes(
        ply_header(
            "binary_little_endian",
            [("vertex", 3, XYZ), ("face", 1, FACE), ("extra", 1 << 29, ["list uchar int stuff"])],
        )  # fmt: skip
        + verts
        + TRI_FACE
    )
    d = case("ply_extra_element_fits_header_limit", "scene.ply", phrase="truncated")
    (d / "scene.ply").write_bytes(
        ply_header(
            "binary_little_endian",
            [("vertex", 3, XYZ), ("face", 1, FACE), ("extra", 1 << 26, ["list uchar int stuff"])],
        )  # fmt: skip
        + verts
        + TRI_FACE
    )
    (case("ply_huge_vertex_count", "scene.ply", phrase="truncated") / "scene.ply").write_bytes(
        ply_header("binary_little_endian", [("vertex", 1 << 26, XYZ), ("face", 1, FACE)]) + verts + TRI_FACE
    )
    (case("ply_vertex_count_over_limit", "scene.ply", phrase="limits") / "scene.ply").write_bytes(
        ply_header("binary_little_endian", [("vertex", 1 << 40, XYZ), ("face", 1, FACE)]) + verts + TRI_FACE
    )
    (case("ply_huge_face_count", "scene.ply", phrase="truncated") / "scene.ply").write_bytes(
        ply_header("binary_little_endian", [("vertex", 3, XYZ), ("face", 1 << 25, FACE)]) + verts + TRI_FACE
    )
    (case("ply_huge_list_length", "scene.ply", phrase="truncated") / "scene.ply").write_bytes(
        ply_header(
            "binary_little_endian", [("vertex", 3, XYZ), ("face", 1, ["list uint int vertex_indices"])]
        )
        + verts
        + struct.pack("<I", 0xFFFFFFFF)
        + b"\x00" * 12
    )
    (case("ply_ascii_huge_counts", "scene.ply", phrase="truncated") / "scene.ply").write_bytes(
        ply_header("ascii", [("vertex", 60_000_000, XYZ), ("face", 60_000_000, FACE)]) + b"0 0 0\n3 0 0 0\n"
    )
    (case("ply_fewer_faces_declared", "scene.ply", phrase="fewer rows") / "scene.ply").write_bytes(
        ply_header("binary_little_endian", [("vertex", 3, XYZ), ("face", 1, FACE)]) + verts + TRI_FACE * 2
    )
    (case("ply_ascii_fewer_faces_declared", "scene.ply", phrase="fewer rows") / "scene.ply").write_bytes(
        ply_header("ascii", [("vertex", 3, XYZ), ("face", 1, FACE)])
        + b"0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n3 0 2 1\n"
    )
    (case("ply_mixed_polygons_ok", "scene.ply", "accepted") / "scene.ply").write_bytes(
        ply_header("binary_little_endian", [("vertex", 4, XYZ), ("face", 2, FACE)])
        + struct.pack("<12f", 0, 0, 0, 1, 0, 0, 1, 1, 0, 0, 1, 0)
        + struct.pack("<B4i", 4, 0, 1, 2, 3)
        + TRI_FACE
    )
    (case("ply_float_indices", "scene.ply", phrase="floating-point") / "scene.ply").write_bytes(
        ply_header(
            "binary_little_endian", [("vertex", 3, XYZ), ("face", 1, ["list uchar float vertex_indices"])]
        )
        + verts
        + struct.pack("<B3f", 3, 0, 1, 2)
    )
    (case("ply_bad_type", "scene.ply", phrase="unknown property type") / "scene.ply").write_bytes(
        ply_header(
            "binary_little_endian", [("vertex", 3, ["quad x", "float y", "float z"]), ("face", 1, FACE)]
        )
        + verts
        + TRI_FACE
    )
    (case("ply_no_end_header", "scene.ply", phrase="end_header") / "scene.ply").write_bytes(
        b"ply\nformat ascii 1.0\nelement vertex 99999999999\n"
    )
    (case("ply_negative_count", "scene.ply", phrase="header line") / "scene.ply").write_bytes(
        ply_header("ascii", [("vertex", -1, XYZ), ("face", 1, FACE)])
    )

    # ------------------------------------------------------------------ images
    def textured(name: str, image: str, data: bytes, phrase: str, outcome: str = "refused") -> None:
        d = case(name, "scene.toml", outcome, phrase)
        (d / "tri.obj").write_text(TRI_OBJ)
        (d / image).write_bytes(data)
        (d / "scene.toml").write_text(
            f'[materials.t]\nbase_color_texture = "{image}"\n[[meshes]]\nfile = "tri.obj"\nmaterial = "t"\n'
        )

    textured("png_declared_100000_squared", "big.png", png(100_000, 100_000, zlib.compress(b"\x00" * 64)),
             "pixels")  # fmt: skip
    textured("png_declared_30000_squared", "big.png", png(30_000, 30_000, zlib.compress(b"\x00" * 64)),
             "limit")  # fmt: skip
    textured(
        "png_declared_big_short_file", "big.png", png(16000, 8000, zlib.compress(b"\x00" * 64)), "cannot hold"
    )
    textured("jpeg_declared_big_short_file", "big.jpg", jpeg_declaring(8000, 16000), "cannot hold")
    textured("png_truncated", "t.png", png(64, 64, zlib.compress(b"\x00" * 10)), "corrupt or truncated")
    textured("png_not_png", "t.png", b"GIF89a" + b"\x00" * 32, "not a PNG or JPEG")
    textured("png_ok", "t.png", png(1, 1, zlib.compress(b"\x00\xff\x00\x00")), "", "accepted")
    textured("jpeg_garbage", "t.jpg", b"\xff\xd8\xff\xe0" + b"\x00" * 40, "image")
    textured(
        "hdr_declared_huge", "sky.hdr", b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 30000 +X 30000\n", "limit"
    )
    textured("hdr_declared_big_short_file", "sky.hdr",
             b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 8000 +X 16000\n\x02\x02", "truncated")  # fmt: skip
    textured("exr_garbage", "sky.exr", b"v/1\x01" + b"\xff" * 60, "EXR")

    # ------------------------------------------------------------------ TOML
    def toml(name: str, text: str, phrase: str, outcome: str = "refused", obj: bool = True) -> Path:
        d = case(name, "scene.toml", outcome, phrase)
        if obj:
            (d / "tri.obj").write_text(TRI_OBJ)
        (d / "scene.toml").write_text(text)
        return d

    toml("toml_nested_arrays_3000", "x = " + "[" * 3000 + "]" * 3000 + "\n", "nested")
    toml("toml_nested_tables_3000", "[" + ".".join(["a"] * 3000) + "]\n", "nested")
    toml("toml_nested_inline_3000", "x = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n", "nested")
    toml("toml_mesh_dotdot", '[[meshes]]\nfile = "../outside/tri.obj"\n', "outside the scene folder")
    toml("toml_mesh_absolute", '[[meshes]]\nfile = "/etc/passwd.obj"\n', "outside the scene folder")
    toml("toml_light_dotdot", '[[lights]]\nfile = "../outside/tri.obj"\nradiance = [1, 1, 1]\n',
         "outside the scene folder")  # fmt: skip
    toml("toml_texture_dotdot", '[materials.m]\nbase_color_texture = "../outside/tex.png"\n'
         '[[meshes]]\nfile = "tri.obj"\nmaterial = "m"\n', "outside the scene folder")  # fmt: skip
    env = '[environment]\nimage = "/etc/passwd.png"\n[[meshes]]\nfile = "tri.obj"\n'
    toml("toml_environment_absolute", env, "outside the scene folder")
    toml("toml_nul_in_path", '[[meshes]]\nfile = "tri\\u0000.obj"\n', "NUL")
    toml("toml_nan", '[[meshes]]\nfile = "tri.obj"\ntranslate = [nan, 0, 0]\n', "finite")
    toml("toml_not_utf8", "", "UTF-8").joinpath("scene.toml").write_bytes(b"\xff\xfe[[meshes]]\n")
    toml("toml_syntax", "[[meshes]\n", "TOML syntax error")
    toml("toml_inside_ok", '[[meshes]]\nfile = "sub/../tri.obj"\n', "", "accepted")

    # ------------------------------------------------------------------ Mitsuba XML
    def xml(name: str, body: str, phrase: str, outcome: str = "refused", head: str = "") -> Path:
        d = case(name, "scene.xml", outcome, phrase)
        (d / "tri.obj").write_text(TRI_OBJ)
        (d / "scene.xml").write_text(f'{head}<scene version="3.0.0">\n{body}\n</scene>\n')
        return d

    def obj_shape(filename: str) -> str:
        return f'<shape type="obj"><string name="filename" value="{filename}"/></shape>'

    laughs = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    xml("xml_billion_laughs", "&l9;", "not allowed", head=f'<!DOCTYPE scene [<!ENTITY l0 "lol">{laughs}]>\n')
    xml("xml_external_entity", '<string name="x" value="&x;"/>', "not allowed",
        head='<!DOCTYPE scene [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n')  # fmt: skip
    xml("xml_nested_3000", "<bsdf>" * 3000 + "</bsdf>" * 3000, "nested more deeply")
    xml("xml_obj_dotdot", obj_shape("../outside/tri.obj"), "outside the scene folder")
    xml("xml_envmap_absolute", obj_shape("tri.obj") + '<emitter type="envmap"><string name="filename" '
        'value="/etc/passwd.exr"/></emitter>', "outside the scene folder")  # fmt: skip
    sphere = '<shape type="sphere"><float name="radius" value="{}"/></shape>'
    xml("xml_nan", sphere.format("nan"), "finite")
    xml("xml_number_overflow", sphere.format("1e400"), "finite")
    bomb = '<default name="a" value="' + "x" * 4000 + '"/>' + obj_shape("$a" * 1000)
    xml("xml_param_bomb", bomb, "longer than")
    plugin = obj_shape("tri.obj")[:-8] + '<bsdf type="principled"/></shape>'
    xml("xml_unknown_plugin", plugin, "not supported")
    xml("xml_not_well_formed", "<shape type='obj'>", "XML syntax error")
    xml("xml_inside_ok", obj_shape("sub/../tri.obj"), "", "accepted")
    (root / "cases.json").write_text(json.dumps(CASES, indent=1, sort_keys=True) + "\n")
    return dict(CASES)


if __name__ == "__main__":
    write()
