"""The registry's byte-range bookkeeping: a record's saved range is computed once and kept
(`saved_span`), and gives the same overlap answers as computing it afresh."""
from __future__ import annotations

import itertools

import torch

import gradguard
from gradguard._core.registry import SavedRecord, byte_range, overlaps, saved_span
from gradguard._core.runtime import runtime


def _views() -> list[torch.Tensor]:
    base = torch.zeros(6, 8)
    return [base, base.t(), base[:, 1], base[:, 2:4], base[1:3], base[::2], base[1:, ::3],
            base.reshape(-1)[5:9], base[0, :0]]


def test_overlaps_with_a_records_kept_span_answers_as_without_it():
    views = _views()
    for saved, written in itertools.product(views, views):
        rec = SavedRecord(saved, 0, None, None, ())
        start, end = byte_range(written)
        assert overlaps(saved, start, end, written, saved_span(rec)) == overlaps(
            saved, start, end, written), (saved.shape, saved.stride(), written.shape)
        assert overlaps(saved, start, end, None, saved_span(rec)) == overlaps(
            saved, start, end, None)


def test_a_metadata_write_to_the_saved_tensor_drops_its_kept_span():
    w = torch.ones(4, requires_grad=True)
    buf = torch.zeros(4)  # a leaf: the record holds it as itself
    with gradguard.detect(on_conflict="record"):
        loss = (w * buf).sum()  # saves buf
        (rec,) = [r for r in runtime.registry.records() if r.tensor is buf]
        buf.untyped_storage()  # nothing written yet: no span asked for
        assert rec.span is None
        torch.zeros(4).add_(1)  # another storage: the record is not looked at
        assert rec.span is None
        buf.add_(0)  # a write into its storage asks, and keeps the answer
        assert rec.span == (0, 16, True)
        buf.resize_(8)  # its shape and bytes change: the kept span would be stale
        assert rec.span is None
        del loss


def test_writes_elsewhere_leave_saves_queued_and_a_freed_graph_empties_the_queue():
    reg = runtime.registry
    x = torch.randn(4, requires_grad=True)
    other = torch.zeros(4)
    with gradguard.detect(on_conflict="record") as guard:
        reg.sweep()
        h = x.exp()  # ExpBackward0 saves its result, h
        key = h.untyped_storage()._cdata
        assert len(reg._pending) == 1 and key not in reg._index
        other.add_(1)  # nothing saved there: the queue is left as it is
        assert len(reg._pending) == 1 and key not in reg._index
        h.data[0] = 5.0  # a silent write into the saved result: found, via its key
        assert not reg._pending and key in reg._index
        z = x.sin()  # SinBackward0 saves x: queued, and never written
        (h.sum() + z.sum()).backward()  # frees the graph: both records die
        assert len(reg._pending) == 1 and reg.maybe_live()  # a dead reference, queued
        other.add_(1)
        assert not reg._pending and not reg.maybe_live()  # later writes cost no lookup
    assert [c.code for c in guard.conflicts] == ["GGR101"]
