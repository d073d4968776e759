"""The reference no in-place write can corrupt: every saved tensor copied at save time.

Used by `gradguard.verify()` as the reference run and by the tests of `protect()`, whose
promise is "gradients equal those of the program with every saved tensor snapshotted".
It costs one copy of every saved tensor, so it is a reference, not a fix.
"""
from __future__ import annotations

import torch


def _pack(t: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        # detach(): the copy must not join the graph; clone() keeps strides for dense
        # tensors, so backward formulas see the same layout they would have seen.
        return t.detach().clone()


def _unpack(t: torch.Tensor) -> torch.Tensor:
    return t


class snapshot_saved_tensors(torch.autograd.graph.saved_tensors_hooks):
    """Context manager: copy every tensor autograd saves, at the moment it is saved."""

    def __init__(self) -> None:
        super().__init__(_pack, _unpack)
