"""Events per cause: a few per window, then a count carried by the next one let through."""

from __future__ import annotations

from edged.sync.limit import CauseLimit, excerpt


def test_a_cause_over_its_limit_is_counted_and_reported_later() -> None:
    now = [0.0]
    limit = CauseLimit(per_window=2, window=60, clock=lambda: now[0])
    assert [limit.admit("bad_signature") for _ in range(5)] == [0, 0, None, None, None]
    assert limit.admit("unknown_fleet_key") == 0  # another cause has its own room
    now[0] = 61.0
    assert limit.admit("bad_signature") == 3  # the three held back, told with the next
    assert limit.admit("bad_signature") == 0


def test_excerpts_are_bounded_and_say_how_long_the_text_was() -> None:
    assert excerpt("short") == "short" and excerpt(None) is None
    cut = excerpt("x" * 10_000, 50)
    assert cut is not None and cut.startswith("x" * 50) and cut.endswith("(10000 characters)")
    assert len(cut) < 80
