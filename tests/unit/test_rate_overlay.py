"""The worker's overlay of a batch's rate states (processors/rows.py `Overlay`): read through to
the states kept, changed only in the batch's own layer, kept only if the batch succeeds."""

from __future__ import annotations

import pytest

from processors.qrating import RateState
from processors.rows import Overlay

A, B, C = (1, "/a", "e"), (2, "/a", "e"), (3, "/a", "e")


def test_reads_through_and_writes_only_its_own_layer() -> None:
    kept = {A: RateState(1, 1.0), B: RateState(2, 2.0)}
    rates = Overlay(kept)
    assert rates.get(A) == RateState(1, 1.0) and rates[B] == RateState(2, 2.0)
    assert rates.get(C) is None and C not in rates and A in rates
    with pytest.raises(KeyError):
        rates[C]
    rates[A] = RateState(5, 5.0)
    assert rates.setdefault(C, RateState(3, 3.0)) == RateState(3, 3.0)
    assert rates.setdefault(B, RateState(9, 9.0)) == RateState(2, 2.0)  # found below: not replaced
    assert rates[A] == RateState(5, 5.0) and rates.get(C) == RateState(3, 3.0)
    assert rates.new == {A: RateState(5, 5.0), C: RateState(3, 3.0)}
    assert kept == {A: RateState(1, 1.0), B: RateState(2, 2.0)}  # untouched until the caller keeps them
    assert sorted(rates) == [A, B, C] and len(rates) == 3
    del rates[A]
    assert rates[A] == RateState(1, 1.0)
    with pytest.raises(KeyError):
        del rates[B]  # only its own layer
