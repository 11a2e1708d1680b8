"""Writes the seed corpus for tests/test_fuzz_scene.py beside this script: one or two small valid
files per decoder, which the fuzzer mutates (a valid start reaches past the magic numbers).

    .venv/bin/python tests/data/fuzz/scene/make.py
"""

from __future__ import annotations

import base64
import io
import json
import struct
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TRI = struct.pack("<9f", 0, 0, 0, 1, 0, 0, 0, 1, 0)


def gltf_doc(uri: str | None) -> dict:
    buf = {"byteLength": 42} if uri is None else {"byteLength": 42, "uri": uri}
    return {
        "asset": {"version": "2.0"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "translation": [0, 0, 1], "children": [1]}, {"mesh": 0, "scale": [2, 2, 2]}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1, "material": 0}]}],
        "materials": [{"pbrMetallicRoughness": {"baseColorFactor": [1, 0.5, 0.2, 1], "metallicFactor": 0}}],
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "count": 3, "type": "VEC3"},
            {"bufferView": 1, "componentType": 5123, "count": 3, "type": "SCALAR"},
        ],
        "bufferViews": [{"buffer": 0, "byteLength": 36}, {"buffer": 0, "byteOffset": 36, "byteLength": 6}],
        "buffers": [buf],
    }


SEED_XML = """<scene version="3.0.0">
<default name="spp" value="4"/>
<integrator type="path"><integer name="max_depth" value="4"/></integrator>
<sensor type="perspective"><float name="fov" value="40"/><string name="fov_axis" value="smaller"/>
 <transform name="to_world"><lookat origin="0, 0, 3" target="0, 0, 0" up="0, 1, 0"/></transform>
 <sampler type="independent"><integer name="sample_count" value="$spp"/></sampler>
 <film type="hdrfilm"><integer name="width" value="16"/><integer name="height" value="12"/>
  <rfilter type="box"/></film>
</sensor>
<bsdf type="twosided" id="w"><bsdf type="roughplastic"><string name="distribution" value="ggx"/></bsdf></bsdf>
<shape type="obj"><string name="filename" value="tri.obj"/><ref id="w"/>
 <transform name="to_world"><scale value="2"/><rotate y="1" angle="30"/><translate x="0.5"/></transform>
</shape>
<shape type="sphere"><float name="radius" value="0.3"/><bsdf type="dielectric"/></shape>
<shape type="rectangle"><emitter type="area"><rgb name="radiance" value="5, 4, 3"/></emitter>
 <transform name="to_world"><matrix value="1 0 0 0 0 0 1 2 0 -1 0 0 0 0 0 1"/></transform></shape>
<emitter type="envmap"><string name="filename" value="t.png"/><float name="scale" value="0.5"/></emitter>
<emitter type="spot">
 <transform name="to_world"><lookat origin="0, 3, 0" target="0, 0, 0" up="1, 0, 0"/></transform></emitter>
</scene>
"""


def main() -> None:
    bin_ = TRI + struct.pack("<3H", 0, 1, 2)
    (HERE / "seed.obj").write_text(
        "# a quad and a triangle\nmtllib m.mtl\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 1 1\n"
        "vn 0 0 1\nusemtl red\nf 1/1/1 2/2/1 3/3/1 4/1/1\ng second\nf -1 -2 -3\n"
    )
    (HERE / "seed.mtl").write_text(
        "newmtl red\nKd 0.8 0.1 0.1\nKe 0 0 0\nPm 0\nPr 0.5\nmap_Kd -s 1 1 1 t.png\n"
    )
    header = (
        "ply\nformat {} 1.0\nelement vertex 4\nproperty float x\nproperty float y\nproperty float z\n"
        "property float nx\nproperty float ny\nproperty float nz\nelement face 2\n"
        "property list uchar int vertex_indices\nend_header\n"
    )
    verts = [(0, 0, 0, 0, 0, 1), (1, 0, 0, 0, 0, 1), (1, 1, 0, 0, 0, 1), (0, 1, 0, 0, 0, 1)]
    faces = [(0, 1, 2, 3), (0, 2, 1)]
    body = b"".join(struct.pack("<6f", *v) for v in verts)
    body += b"".join(struct.pack(f"<B{len(f)}i", len(f), *f) for f in faces)
    (HERE / "seed_binary.ply").write_bytes(header.format("binary_little_endian").encode() + body)
    text = "".join(" ".join(map(str, v)) + "\n" for v in verts)
    text += "".join(f"{len(f)} " + " ".join(map(str, f)) + "\n" for f in faces)
    (HERE / "seed_ascii.ply").write_text(header.format("ascii") + text)
    uri = "data:application/octet-stream;base64," + base64.b64encode(bin_).decode()
    (HERE / "seed.gltf").write_text(json.dumps(gltf_doc(uri)))
    js = json.dumps(gltf_doc(None)).encode()
    js += b" " * (-len(js) % 4)
    binp = bin_ + b"\x00" * (-len(bin_) % 4)
    glb = struct.pack("<II", len(js), 0x4E4F534A) + js + struct.pack("<II", len(binp), 0x004E4942) + binp
    (HERE / "seed.glb").write_bytes(b"glTF" + struct.pack("<II", 2, 12 + len(glb)) + glb)
    (HERE / "seed.toml").write_text(
        "[render]\nresolution = [64, 48]\nspp = 4\n[camera]\nposition = [0, 0, 3]\nlook_at = [0, 0, 0]\n"
        "[[camera.keyframes]]\nframe = 0\n[[camera.keyframes]]\nframe = 3\nposition = [1, 0, 3]\n"
        "[environment]\ncolor = [0.1, 0.1, 0.1]\n[materials.white]\nbase_color = [0.8, 0.8, 0.8]\n"
        'base_color_texture = "t.png"\n[[meshes]]\nfile = "tri.obj"\nmaterial = "white"\n'
        'rotate_deg = [0, 30, 0]\nscale = [1, 2, 1]\n[[lights]]\nfile = "tri.obj"\nradiance = [5, 5, 5]\n'
        "translate = [0, 1, 0]\n"
    )
    (HERE / "seed.xml").write_text(SEED_XML)
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3)).save(out, "PNG")
    (HERE / "seed.png").write_bytes(out.getvalue())
    out = io.BytesIO()
    Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3)).save(out, "JPEG")
    (HERE / "seed.jpg").write_bytes(out.getvalue())
    rgbe = bytes([128, 64, 32, 129] * 8 * 2)
    rle = (bytes([2, 2, 0, 8]) + b"".join(bytes([128 + 8, 100 + c]) for c in range(4))) * 2
    (HERE / "seed_flat.hdr").write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 2 +X 8\n" + rgbe)
    (HERE / "seed_rle.hdr").write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 2 +X 8\n" + rle)
    import OpenEXR

    px = np.full((2, 3), 0.5, np.float32)
    header = {"compression": OpenEXR.NO_COMPRESSION, "type": OpenEXR.scanlineimage}
    with OpenEXR.File(header, {"R": px, "G": px, "B": px}) as f:
        f.write(str(HERE / "seed.exr"))


if __name__ == "__main__":
    main()
