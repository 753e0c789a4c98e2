"""The circuit breaker on a clock the test moves."""

from __future__ import annotations

from edged.models.breaker import Breaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_consecutive_failures_open_it_for_a_while() -> None:
    clock = Clock()
    b = Breaker(failures=3, open_for=30, clock=clock)
    b.failure()
    b.success()  # not consecutive: starts again
    b.failure()
    b.failure()
    assert b.state == "closed" and b.allow()
    b.failure()
    assert b.state == "open" and not b.allow() and b.opened == 1
    clock.now += 29
    assert not b.allow() and round(b.retry_in()) == 1


def test_one_probe_at_a_time_and_its_success_closes_it() -> None:
    clock = Clock()
    b = Breaker(failures=1, open_for=10, clock=clock)
    b.failure()
    clock.now += 10
    assert b.state == "half_open"
    assert b.allow()  # the probe
    assert not b.allow()  # everyone else keeps going to the fallback
    b.success()
    assert b.state == "closed" and b.failures == 0 and b.allow()


def test_a_failed_probe_opens_it_again() -> None:
    clock = Clock()
    b = Breaker(failures=2, open_for=10, clock=clock)
    b.failure()
    b.failure()
    clock.now += 10
    assert b.allow()
    b.failure()
    assert b.state == "open" and b.opened == 2
    clock.now += 10
    assert b.allow()


def test_an_abandoned_probe_lets_the_next_request_probe() -> None:
    clock = Clock()
    b = Breaker(failures=1, open_for=0, clock=clock)
    b.failure()
    assert b.allow()
    b.abandoned()
    assert b.state == "half_open" and b.allow()
