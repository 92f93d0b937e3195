"""Exactly once through power loss: the booted guest killed at random moments while profiles
arrive and merge (tests/guest/power_loss.py). PGOD_POWER_CUTS sets the number of cuts (default
3, what CI runs); `scripts/guest-power-loss --cuts 20` is the long run."""

from __future__ import annotations

import os

import pytest

from guest import power_loss
from guest.machine import guest_unavailable

pytestmark = [pytest.mark.guest, pytest.mark.slow, pytest.mark.skipif(bool(guest_unavailable()), reason=guest_unavailable() or "")]


def test_a_guest_cut_off_at_random_moments_counts_every_sent_profile_exactly_once(tmp_path, clang14):
    cuts = int(os.environ.get("PGOD_POWER_CUTS", "3"))
    result = power_loss.run(tmp_path, clang14, cuts=cuts, files=300, max_delay_s=20.0)
    print(result.summary())
    assert len(result.cuts) == cuts
    assert result.files_sent > 0
    assert result.quarantined == 0
    assert result.files_counted == result.files_sent
    assert result.same_as_one_merge
