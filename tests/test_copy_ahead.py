"""``Backend.copy_ahead()``: host-to-device copies made ahead of their use (issue 17, point 4).

On every backend the arrays equal ``from_host`` bitwise. On the CuPy stand-in (tests/fake_cupy.py,
whose streams queue a second stream's copies until they are ordered before use), the copies come
from pinned memory on a second stream, the current stream waits for them without a host sync, a
slot's pinned buffers are refilled only after one ``Event.synchronize``, and every shortcut (no
``wait_event``, no slot wait, no wait for the current stream before the copy) is caught.
"""

from __future__ import annotations

import numpy as np
import pytest

import fake_cupy
from xpmlp.backend import CopyAhead, to_numpy


def _pair(rng, rows, dtype, weights=True):
    X = rng.normal(size=(rows, 5)).astype(dtype)
    y = rng.integers(0, 7, rows).astype(np.int64)
    w = rng.random(rows).astype(dtype) if weights else None
    return [X, y, w]


def _same(device_array, host):
    got = to_numpy(device_array)
    assert got.dtype == host.dtype and got.shape == host.shape
    assert got.tobytes() == np.ascontiguousarray(host).tobytes()


# -- every backend ---------------------------------------------------------------------------------
def test_arrays_equal_from_host_bitwise(case):
    b = case.backend
    rng = np.random.default_rng(0)
    other = "float32" if case.dtype == "float64" else case.dtype  # no float64 on strict's no_float64
    pairs = [_pair(rng, 9, case.dtype), _pair(rng, 4, case.dtype, weights=False), _pair(rng, 6, other),
             [rng.normal(size=(3, 5)).astype(case.dtype), rng.normal(size=3).astype(case.dtype), None]]
    mover = b.copy_ahead()  # on a model's device, whatever device is current (GPU 0 for "cuda:1")
    assert isinstance(mover, CopyAhead)
    tickets = [mover.submit(p) for p in pairs]
    for ticket, host in zip(tickets, pairs):
        got = ticket.arrays()
        assert len(got) == 3
        assert all(a is c for a, c in zip(got, ticket.arrays()))  # the same arrays
        for d, h in zip(got, host):
            if h is None:
                assert d is None
                continue
            ref = b.from_host(h)
            b.check_array(d)  # this backend's library and device
            assert d.dtype == ref.dtype
            _same(d, h)
            assert to_numpy(ref).tobytes() == to_numpy(d).tobytes()
    mover.close()
    mover.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        mover.submit(pairs[0])


def test_context_manager_closes(case):
    b = case.backend
    with b.copy_ahead() as mover:
        t = mover.submit([np.arange(4, dtype=case.dtype)])
    assert mover.closed
    _same(t.arrays()[0], np.arange(4, dtype=case.dtype))
    with pytest.raises(RuntimeError, match="closed"):
        mover.submit([np.arange(4, dtype=case.dtype)])


# -- the CuPy stand-in ---------------------------------------------------------------------------------
@pytest.fixture
def fake():
    with fake_cupy.installed(device_count=2) as cupy:
        fake_cupy.COUNTS.reset()
        yield cupy


@pytest.fixture
def gpu1(fake):
    """The backend on GPU 1 while GPU 0 stays current (work on the wrong device fails)."""
    import xpmlp

    backend = xpmlp.resolve("cuda:1")
    fake_cupy.COUNTS.reset()  # resolving reads a probe back: not the mover's
    return backend


@pytest.fixture
def sets(monkeypatch):
    """Every ndarray.set call: (destination, source, stream)."""
    calls = []
    original = fake_cupy.ndarray.set

    def spy(self, arr, stream=None):
        calls.append((self, arr, stream))
        return original(self, arr, stream)

    monkeypatch.setattr(fake_cupy.ndarray, "set", spy)
    return calls


def _syncs():
    return dict(fake_cupy.COUNTS.sync_reasons)


def test_copies_come_from_pinned_memory_on_a_second_stream(fake, gpu1, sets):
    rng = np.random.default_rng(1)
    mover = gpu1.copy_ahead()
    host = _pair(rng, 8, np.float32)
    ticket = mover.submit(host)
    assert len(sets) == 3
    current = fake.cuda.get_current_stream()
    for dst, src, stream in sets:
        assert fake_cupy.is_pinned(src)
        assert stream is not None and stream != current and stream.non_blocking and stream.device_id == 1
        assert dst.device == fake.cuda.Device(1)
    assert len({id(s) for _, _, s in sets}) == 1  # one copy stream per mover
    assert fake_cupy.COUNTS.copies == [("second", True)] * 3
    assert fake.cuda.runtime.getDevice() == 0  # GPU 0 stays current
    for d, h in zip(ticket.arrays(), host):
        _same(d, h)
    mover.submit(host)
    assert len({id(s) for _, _, s in sets}) == 1  # the same stream for later submits
    mover.close()


def test_the_current_stream_waits_for_the_copies_without_a_host_sync(fake, gpu1, monkeypatch):
    waits = []
    original = fake_cupy.Stream.wait_event

    def spy(self, event):
        waits.append((self, event))
        return original(self, event)

    monkeypatch.setattr(fake_cupy.Stream, "wait_event", spy)
    rng = np.random.default_rng(2)
    mover = gpu1.copy_ahead()
    hosts = [_pair(rng, 5, np.float64), _pair(rng, 7, np.float64)]
    tickets = [mover.submit(hosts[0])]
    queued = tickets[0]._arrays[0]
    assert np.isnan(queued._a).all()  # not ordered yet: the stand-in's destination is garbage
    got = tickets[0].arrays()
    assert waits[-1] == (fake.cuda.get_current_stream(), tickets[0]._event)  # the current stream waited
    assert not np.isnan(queued._a).any()
    tickets.append(mover.submit(hosts[1]))
    got = [got, tickets[1].arrays()]
    assert fake_cupy.COUNTS.syncs == 0, _syncs()  # two tickets: no host sync in submit or arrays
    for arrays, host in zip(got, hosts):
        for d, h in zip(arrays, host):
            _same(d, h)


def test_one_event_synchronize_per_submit_once_both_slots_are_used(fake, gpu1):
    rng = np.random.default_rng(3)
    mover = gpu1.copy_ahead()
    hosts = [_pair(rng, 6, np.float32) for _ in range(6)]
    # the chunked pattern: submit the next pair, then train the previous one
    previous, seen = None, []
    for k, host in enumerate(hosts):
        ticket = mover.submit(host)
        assert fake_cupy.COUNTS.syncs == max(0, k - 1), (k, _syncs())  # the third submit reuses slot 0
        if previous is not None:
            seen.append(previous.arrays())
        previous = ticket
    seen.append(previous.arrays())
    assert _syncs() == {"Event.synchronize": len(hosts) - 2}  # one per submit from the third on, none per batch
    mover.close()  # the last copies may still read the pinned buffers (the stand-in takes the slowest GPU)
    assert _syncs() == {"Event.synchronize": len(hosts) - 2, "Stream.synchronize": 1}
    for arrays, host in zip(seen, hosts):
        for d, h in zip(arrays, host):
            _same(d, h)


def test_close_waits_for_copies_in_flight(fake, gpu1):
    mover = gpu1.copy_ahead()
    ticket = mover.submit([np.arange(6.0)])
    event = ticket._event
    mover.close()
    assert event.done
    assert _syncs() == {"Stream.synchronize": 1}  # the pinned buffers are freed only after their copy
    _same(ticket.arrays()[0], np.arange(6.0))
    with pytest.raises(RuntimeError, match="closed"):
        mover.submit([np.arange(6.0)])


def test_a_missing_wait_event_reads_garbage(fake, gpu1, monkeypatch):
    """The stand-in catches a ticket handed over without the current stream's wait_event."""
    original = fake_cupy.Stream.wait_event

    def skip_current(self, event):  # the broken ordering: the current stream never waits
        if self == fake_cupy.get_current_stream():
            return None
        return original(self, event)

    monkeypatch.setattr(fake_cupy.Stream, "wait_event", skip_current)
    mover = gpu1.copy_ahead()
    X, y = np.arange(12.0).reshape(4, 3), np.arange(4)
    Xd, yd = mover.submit([X, y]).arrays()
    with gpu1.activate():
        assert np.isnan(to_numpy(Xd)).all()
        assert (to_numpy(yd) == np.iinfo(np.int64).max).all()
        assert np.isnan(float(gpu1.xp.sum(Xd)))  # a kernel on the current stream reads garbage too


def test_refilling_a_slot_without_waiting_for_its_copy_raises(fake, gpu1, monkeypatch):
    monkeypatch.setattr(fake_cupy.Event, "synchronize", lambda self: None)  # the broken slot reuse
    mover = gpu1.copy_ahead()
    mover.submit([np.ones(4)])
    mover.submit([np.ones(4)])
    with pytest.raises(ValueError, match="read-only"):  # slot 0's pinned buffer is still read by its copy
        mover.submit([np.ones(4)])


def test_the_stand_in_refuses_writes_to_a_pinned_buffer_a_queued_copy_reads(fake):
    import cupyx

    s = fake.cuda.Stream(non_blocking=True)
    pinned = cupyx.empty_pinned((3,), dtype=np.float32)
    pinned[...] = [1, 2, 3]
    dst = fake.empty(3, dtype=np.float32)
    s.wait_event(fake.cuda.get_current_stream().record())
    dst.set(pinned, stream=s)
    with pytest.raises(ValueError, match="read-only"):
        pinned[0] = 5
    with pytest.raises(ValueError, match="read-only"):
        np.copyto(pinned[:2], [5, 6])
    assert not s.done and np.isnan(dst._a).all()
    s.synchronize()
    assert s.done and fake_cupy.COUNTS.sync_reasons == {"Stream.synchronize": 1}
    np.testing.assert_array_equal(dst.get(), [1, 2, 3])
    pinned[0] = 5  # writable again once the copy ran
    # a pageable source is staged at once: writing it afterwards does not change the copy
    host = np.array([7.0, 8.0, 9.0], dtype=np.float32)
    dst2 = fake.empty(3, dtype=np.float32)
    s.wait_event(fake.cuda.get_current_stream().record())
    dst2.set(host, stream=s)
    host[0] = 0
    event = s.record()
    assert not event.done
    event.synchronize()
    np.testing.assert_array_equal(dst2.get(), [7, 8, 9])
    assert fake_cupy.COUNTS.copies == [("second", True), ("second", False)]


def test_the_copy_stream_must_wait_for_the_current_stream_before_copying(fake, gpu1, monkeypatch):
    """CuPy's pool hands memory freed on the current stream back to it at once: without the copy
    stream's wait, a copy could overwrite memory that queued work there still reads."""
    original = fake_cupy.Stream.wait_event

    def skip_copy_stream(self, event):  # the broken ordering: the copy stream never waits
        if self != fake_cupy.get_current_stream():
            return None
        return original(self, event)

    monkeypatch.setattr(fake_cupy.Stream, "wait_event", skip_copy_stream)
    mover = gpu1.copy_ahead()
    with pytest.raises(RuntimeError, match="did not wait for an event recorded on the current stream"):
        mover.submit([np.ones(4)])


def test_an_unclaimed_ticket_does_not_corrupt_a_later_one(fake, gpu1, monkeypatch):
    waits = []
    original = fake_cupy.Stream.wait_event

    def spy(self, event):
        waits.append((self, event))
        return original(self, event)

    monkeypatch.setattr(fake_cupy.Stream, "wait_event", spy)
    rng = np.random.default_rng(4)
    mover = gpu1.copy_ahead()
    hosts = [_pair(rng, 5, np.float32) for _ in range(4)]
    dropped = mover.submit(hosts[0])
    event = dropped._event
    del dropped  # never claimed; the mover keeps its arrays until the current stream has waited for them
    assert len(mover._unordered) == 1
    kept = [mover.submit(h) for h in hosts[1:]]  # the third submit reuses the dropped ticket's slot
    # the current stream waited for its copies at the next submit, before its arrays could return to the pool
    assert (fake.cuda.get_current_stream(), event) in waits
    assert mover._unordered == [kept[-1]]  # the earlier ones were ordered by the submits after them
    assert _syncs() == {"Event.synchronize": 2}  # only the slot waits of the third and fourth submits
    for ticket, host in zip(kept, hosts[1:]):
        for d, h in zip(ticket.arrays(), host):
            _same(d, h)
    last = mover.submit(hosts[0])  # unclaimed at close: close orders it too
    mover.close()
    for d, h in zip(last.arrays(), hosts[0]):
        _same(d, h)


def test_slots_grow_for_a_larger_pair_and_smaller_pairs_use_a_view(fake, gpu1, sets):
    rng = np.random.default_rng(5)
    mover = gpu1.copy_ahead()
    rows = [4, 4, 8, 2, 3]  # slots 0, 1, 0 (grows), 1 (a view of the first rows), 0 (a view)
    buffers = []
    for k, n in enumerate(rows):
        host = _pair(rng, n, np.float64)
        ticket = mover.submit(host)
        slot = k % 2
        X_buffer = mover._buffers[slot][0]
        buffers.append(X_buffer)
        src = sets[-3][1]
        assert src.shape == (n, 5) and fake_cupy.is_pinned(src) and np.shares_memory(src, X_buffer)
        assert X_buffer.nbytes >= host[0].nbytes
        for d, h in zip(ticket.arrays(), host):
            _same(d, h)
    assert buffers[2] is not buffers[0] and buffers[2].nbytes == 8 * 5 * 8  # grown for 8 rows
    assert buffers[3] is buffers[1] and sets[-6][1].nbytes < buffers[3].nbytes  # 2 rows in the 4-row buffer
    assert buffers[4] is buffers[2]  # 3 rows in the 8-row buffer: no new allocation
    mover.close()
    assert mover._buffers == [[], []]


def test_a_submit_that_fails_after_a_copy_was_issued_orders_the_current_stream_after_it(fake, gpu1, monkeypatch):
    """The first array's copy is queued, then preparing the second raises: the arrays made for this
    submit go back to the current stream's pool with the error, so the current stream must wait for
    the copy already issued (and the slot must not be refilled before it ends)."""
    waits = []
    original = fake_cupy.Stream.wait_event
    monkeypatch.setattr(fake_cupy.Stream, "wait_event", lambda self, event: waits.append((self, event))
                        or original(self, event))
    mover = gpu1.copy_ahead()
    pinned, calls = mover._pinned, []

    def failing(slot, position, a):
        calls.append(position)
        if position == 1:
            raise MemoryError("pinned allocation failed")
        return pinned(slot, position, a)

    monkeypatch.setattr(mover, "_pinned", failing)
    with pytest.raises(MemoryError, match="pinned allocation failed"):
        mover.submit(_pair(np.random.default_rng(5), 4, np.float64))
    assert calls == [0, 1] and fake_cupy.COUNTS.copies[-1][0] == "second"
    current = fake.cuda.get_current_stream()
    assert waits[-1][0] is current and waits[-1][1] is mover._slot_events[0]
    mover.close()
