"""Frames and messages, without any network (the party handshake: test_membership.py)."""

from __future__ import annotations

import os
import random

import pytest

from meshrender.protocol import (
    FRAME_BYTES_MAX,
    FRAME_HEADER,
    Chunk,
    FrameDecoder,
    NotFound,
    RemoteProtocolError,
    Want,
    decode_body,
    encode_frame,
)

H = "ab" * 32


def test_frames_survive_any_split():
    msgs = [
        Want(hashes=[H, "cd" * 32]),
        Chunk(hash=H, raw_size=5, zstd=False, data=b"hello"),
        NotFound(hash=H),
    ]
    wire = b"".join(encode_frame(m) for m in msgs)
    rng = random.Random(3)
    for _ in range(50):
        dec, got, i = FrameDecoder(), [], 0
        while i < len(wire):
            n = rng.randint(1, 7)
            got += dec.feed(wire[i : i + n])
            i += n
        dec.end()
        assert got == msgs


def test_oversized_truncated_and_garbage_frames_are_the_peers_fault():
    dec = FrameDecoder()
    with pytest.raises(RemoteProtocolError, match="announced"):
        dec.feed(FRAME_HEADER.pack(FRAME_BYTES_MAX + 1))  # refused before any body arrives
    dec = FrameDecoder()
    dec.feed(encode_frame(NotFound(hash=H))[:-3])
    with pytest.raises(RemoteProtocolError, match="inside a frame"):
        dec.end()
    for body in (b"\x00" * 64, os.urandom(64), b"\x81\xa1t\xa5hello"):  # garbage, random, missing fields
        with pytest.raises(RemoteProtocolError, match="malformed"):
            FrameDecoder().feed(FRAME_HEADER.pack(len(body)) + body)
    with pytest.raises(RemoteProtocolError):  # a hash that is not a hash
        FrameDecoder().feed(encode_frame(NotFound(hash=H)).replace(H.encode(), b"zz" * 32))


def test_chunk_map_bits_round_trip_and_are_checked():
    from meshrender.protocol import ChunkMap

    held = sum(1 << i for i in range(11) if i % 3 == 0)  # chunks 0, 3, 6, 9
    m = ChunkMap.partial("a" * 64, 11, held)
    assert len(m.bits) == 2 and m.bits == bytes([0b01001001, 0b00000010])  # LSB first
    assert m.held_bits(11) == held
    assert ChunkMap(scene_id="a" * 64, count=0, whole=True, bits=b"").held_bits(11) == (1 << 11) - 1
    with pytest.raises(RemoteProtocolError, match="chunk map of 10 chunks"):
        ChunkMap.partial("a" * 64, 10, held).held_bits(11)
    with pytest.raises(RemoteProtocolError, match="in 3 bytes"):
        ChunkMap(scene_id="a" * 64, count=11, whole=False, bits=b"\0\0\0").held_bits(11)
    with pytest.raises(RemoteProtocolError, match="past the scene's last chunk"):
        ChunkMap(scene_id="a" * 64, count=11, whole=False, bits=b"\0\x08").held_bits(11)
    back = decode_body(encode_frame(m)[4:])
    assert back == m


def test_control_messages_bound_what_a_member_can_name():
    import msgspec

    from meshrender import jobs
    from meshrender.protocol import CancelJob, ResultPiece, SubmitJob
    from meshrender.settings import RenderSettings

    s = SubmitJob(scene_id=H, settings=RenderSettings(), last_frame=3, priority=jobs.PRIORITY_MAX)
    assert decode_body(encode_frame(s)[4:]) == s
    body = msgspec.msgpack.encode

    def refused(msg: dict) -> None:
        with pytest.raises(RemoteProtocolError):
            decode_body(body(msg))

    refused({"t": "submit", "scene_id": H, "settings": {}, "priority": jobs.PRIORITY_MAX + 1})
    refused({"t": "submit", "scene_id": H, "settings": {}, "backend": "tpu"})
    refused({"t": "cancel", "job": "ab"})  # shorter than jobs.ID_PREFIX_MIN
    assert decode_body(body({"t": "cancel", "job": "abcd"})) == CancelJob(job="abcd")
    # a result file's name can never leave the folder it is written to
    for name in ("../x", "a/b", ".hidden", "", "x" * 65):
        refused({"t": "file", "name": name, "data": b"", "end_of_file": True, "last": True})
    ok = ResultPiece(name="frame_0001.exr", data=b"x", end_of_file=True, last=False)
    assert decode_body(encode_frame(ok)[4:]) == ok
