"""The watchdog's decisions on a fake clock and a fake key-value store (no threads, no jax job)."""

import pytest

from codegen2_jax import watchdog


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Store:
    """The two jax.distributed client calls Heartbeats makes; `down` makes both fail."""

    def __init__(self):
        self.values, self.down = {}, False

    def key_value_set(self, key, value, allow_overwrite):
        assert allow_overwrite
        if self.down:
            raise ConnectionError("coordinator unreachable")
        self.values[key] = value

    def key_value_dir_get(self, prefix):
        if self.down:
            raise ConnectionError("coordinator unreachable")
        return [(k, v) for k, v in self.values.items() if k.startswith(prefix)]


class Aborted(Exception):
    pass


def raise_aborted(message):
    raise Aborted(message)


@pytest.fixture
def job():
    """Process 0's heartbeats and watchdog, and process 1's heartbeats, sharing one store."""
    clock, store = Clock(), Store()
    beats = [watchdog.Heartbeats(store, i, 2, interval_s=1.0, clock=clock) for i in range(2)]
    dog = watchdog.Watchdog(
        step_timeout_s=10,
        slow_op_timeout_s=100,
        peer_timeout_s=5,
        heartbeats=beats[0],
        on_abort=raise_aborted,
        clock=clock,
    )
    return clock, store, beats, dog


def advance(clock, beats, seconds: int, alive=(0, 1)):
    """Each second, the live processes beat; process 0 (the one checking) last, to see them."""
    for _ in range(seconds):
        clock.now += 1
        for i in sorted(alive, reverse=True):
            beats[i].beat()


def test_an_overdue_step_aborts_naming_it_and_a_quiet_peer(job):
    clock, _, beats, dog = job
    dog.expect("step 7")
    advance(clock, beats, 7)
    advance(clock, beats, 3, alive=(0,))
    dog.check()
    advance(clock, beats, 1, alive=(0,))  # quiet for 4 s: under peer_timeout_s, so not lost
    with pytest.raises(Aborted, match="step 7 did not finish within 10 s.*Quiet peers: process 1"):
        dog.check()


def test_a_slow_op_gets_the_longer_limit_then_the_step_clock_restarts(job):
    clock, _, beats, dog = job
    dog.expect("step 3")
    with dog.slow_op("checkpoint save at step 3"):
        advance(clock, beats, 50)
        dog.check()
    advance(clock, beats, 9)
    dog.check()
    advance(clock, beats, 2)
    with pytest.raises(Aborted, match="step 3 did not finish"):
        dog.check()


def test_a_silent_peer_is_named_after_peer_timeout(job):
    clock, _, beats, dog = job
    advance(clock, beats, 3)
    advance(clock, beats, 5, alive=(0,))
    dog.check()
    advance(clock, beats, 1, alive=(0,))
    with pytest.raises(Aborted, match=r"process 1 has sent no heartbeat for 6\.0 s"):
        dog.check()


def test_a_peer_that_stopped_on_purpose_is_not_lost(job):
    clock, _, beats, dog = job
    advance(clock, beats, 2)
    beats[1].stop()
    advance(clock, beats, 60, alive=(0,))
    dog.check()


def test_a_peer_gets_the_slow_limit_for_its_first_beat(job):
    clock, _, beats, dog = job
    advance(clock, beats, 99, alive=(0,))
    dog.check()
    advance(clock, beats, 2, alive=(0,))
    with pytest.raises(Aborted, match="process 1 .* none yet"):
        dog.check()


def test_an_unreachable_coordinator_is_named(job):
    clock, store, beats, dog = job
    advance(clock, beats, 2)
    store.down = True
    clock.now += 6
    with pytest.raises(Aborted, match=r"coordinator \(process 0\) has not answered for 6\.0 s"):
        dog.check()


def test_settle_returns_at_once_when_every_peer_failed_too(job):
    clock, _, beats, dog = job
    advance(clock, beats, 2)
    beats[1].publish("failed")
    beats[0].beat()
    dog.settle()  # would take 2 * peer_timeout_s of real time otherwise


def test_single_process_settle_and_checks_need_no_heartbeats():
    dog = watchdog.Watchdog(step_timeout_s=1, slow_op_timeout_s=1, peer_timeout_s=1)
    dog.settle()
    dog.check()
