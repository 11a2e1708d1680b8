"""Gossip arriving out of order: a member's newest Status and have-list stand, by the sender's stamp.

GossipSub hands a peer that has just joined what its neighbours still cache, in no set order; the
demo's coordinator took a member's stale "compiling" after its "ready" and offered it no work for
2 s of a 3 s frame. These feed a real Peer's presence (not running: no network) the messages in the
orders gossip can deliver them.
"""

from __future__ import annotations

import time

from meshrender.node import Peer
from meshrender.peer.common import Member
from meshrender.peer.presence import REORDER_MAX_S
from meshrender.protocol import Have, Status

OTHER = "12D3KooWOther"
T = 1_800_000_000_000  # a sender's clock, ms


def status(renderer: str, sent_ms: int) -> Status:
    return Status(version="0.1.0", state="idle", backend="x64", fell_back=False, speed=None, threads=2,
                  free_mem=1 << 30, load=0.1, scenes=0, renderer=renderer, sent_ms=sent_ms)  # fmt: skip


def peer_with_member(tmp_path) -> Peer:
    peer = Peer(home=tmp_path / "home", party="p", secret=b"s" * 16, render=False)
    peer.members[OTHER] = Member(OTHER, [], time.time())
    return peer


def test_an_older_status_arriving_later_does_not_replace_the_newer(tmp_path):
    peer = peer_with_member(tmp_path)
    for renderer, at in (("ready", T + 2000), ("starting", T), ("compiling", T + 1000)):
        peer.presence.on_gossip(OTHER, status(renderer, at))
    assert peer.statuses[OTHER]["renderer"] == "ready"
    peer.presence.on_gossip(OTHER, status("stopped", T + 3000))  # a newer one still replaces it
    assert peer.statuses[OTHER]["renderer"] == "stopped"


def test_a_clock_set_back_and_an_older_peer_are_still_heard(tmp_path):
    peer = peer_with_member(tmp_path)
    peer.presence.on_gossip(OTHER, status("ready", T))
    back = T - int(REORDER_MAX_S * 1000) - 1  # further back than any cache holds: the clock moved
    peer.presence.on_gossip(OTHER, status("compiling", back))
    assert peer.statuses[OTHER]["renderer"] == "compiling"
    peer.presence.on_gossip(OTHER, status("failed", 0))  # no stamp (an older peer): arrival order
    assert peer.statuses[OTHER]["renderer"] == "failed"


def test_an_older_have_list_arriving_later_does_not_replace_the_newer(tmp_path):
    peer = peer_with_member(tmp_path)
    a, b = "a" * 64, "b" * 64
    peer.presence.on_gossip(OTHER, Have(scene_ids=[a, b], sent_ms=T + 10))
    peer.presence.on_gossip(OTHER, Have(scene_ids=[a], sent_ms=T))
    assert peer.have_of[OTHER] == {a, b}
    peer.presence.on_gossip(OTHER, status("ready", T))  # kinds are ordered apart: a Status is heard
    assert peer.statuses[OTHER]["renderer"] == "ready"


def test_a_member_that_left_is_forgotten(tmp_path):
    peer = peer_with_member(tmp_path)
    peer.presence.on_gossip(OTHER, status("ready", T + 5000))
    peer.liveness.lost(OTHER, "test")
    assert OTHER not in peer.statuses
    peer.members[OTHER] = Member(OTHER, [], time.time())  # it comes back (its clock now behind)
    peer.presence.on_gossip(OTHER, status("starting", T))
    assert peer.statuses[OTHER]["renderer"] == "starting"
