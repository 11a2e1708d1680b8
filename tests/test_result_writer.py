"""The coordinator's result writer: accepted results stored off the event loop, in order, in
batches; a discard lands after the results queued before it; a full disk stops it loudly and keeps
everything stored before."""

from __future__ import annotations

import pytest
import trio

from meshrender.coordinate import _ResultWriter, encode_result
from meshrender.jobs import JobDB, JobError, JobSpec, UnitRecord
from meshrender.settings import RenderSettings
from meshrender.store.chunkstore import ChunkStore, StoreError
from meshrender.store.hashing import chunk_hash
from meshrender.units import frame_units

SETTINGS = RenderSettings(width=32, height=32, spp=16, pass_spp=16, bucket_px=16)


def results(n: int, peer: str = "a"):
    out = []
    for u in frame_units(SETTINGS)[:n]:
        sums = bytes(u.pixels * 12)
        chunk = encode_result(u, [16], sums)
        out.append(
            (
                chunk,
                UnitRecord(unit=u, chunk=chunk_hash(chunk), peer=peer, backend="cpu", seconds=0.1, at_s=1.0),
            )
        )
    return out


@pytest.fixture
def setup(tmp_path):
    store = ChunkStore(tmp_path / "store")
    db = JobDB(tmp_path / "jobs.sqlite")
    rec, _ = db.submit(JobSpec(scene_id="ab" * 32, settings=SETTINGS), now=1.0)
    yield store, db, rec.id
    store.close()
    db.close()


def run_writer(store, db, job, body):
    failures = []

    async def main():
        w = _ResultWriter(store, db.path, job, failures.append)
        async with trio.open_nursery() as n:
            await n.start(w.run)
            await body(w)
            n.cancel_scope.cancel()

    trio.run(main)
    return failures


def test_results_are_stored_kept_and_recorded_and_a_discard_comes_after_them(setup):
    store, db, job = setup
    rs = results(4)

    async def body(w):
        for chunk, rec in rs:
            w.put(chunk, rec)
        w.discard([rs[0][1].unit, rs[1][1].unit])  # queued after them: it must find them
        w.put(*results(1, peer="b")[0])  # unit 0 again, from another peer, after the discard
        await w.flush()

    assert run_writer(store, db, job, body) == []
    got = {r.unit: r.peer for r in db.results(job)}
    assert got == {rs[0][1].unit: "b", rs[2][1].unit: "a", rs[3][1].unit: "a"}
    store.gc(grace_s=0)  # the chunks belong to no scene: only being kept for the job saves them
    assert all(store.has(rec.chunk) for _, rec in rs)


def test_a_full_disk_stops_the_writer_says_so_and_keeps_what_was_stored(setup, monkeypatch):
    store, db, job = setup
    rs = results(6)
    put_many = ChunkStore.put_many
    calls = []

    def failing(self, items):
        calls.append(1)
        if len(calls) > 1:
            raise StoreError("disk full")
        return put_many(self, items)

    monkeypatch.setattr(ChunkStore, "put_many", failing)

    async def body(w):
        w.put(*rs[0])
        await w.flush()
        w.put(*rs[1])
        with pytest.raises(JobError, match="cannot store unit results: disk full"):
            await w.flush()
        w.put(*rs[2])  # after a failure nothing more lands: no gaps behind a stored result
        with pytest.raises(JobError):
            await w.flush()

    failures = run_writer(store, db, job, body)
    assert [str(f) for f in failures] == ["disk full"]
    assert [r.unit for r in db.results(job)] == [rs[0][1].unit]
