"""Per-socket event rate limits (calls.events_per_second / calls.events_burst) on a daemon
configured with tiny limits."""

import time

import pytest

from conftest import Daemon, error_code


@pytest.fixture(scope="module")
def strict():
    d = Daemon(calls="events_per_second = 2\nevents_burst = 4")
    yield d
    d.close()


def test_events_over_the_burst_are_rate_limited_then_recover(strict, clients):
    alice, bob = strict.register("alice"), strict.register("bob")
    a = clients.device(alice)
    clients.device(bob)
    codes = [error_code(a.act("end", "0" * 32)) for _ in range(4)]
    assert codes == ["CALL_NOT_FOUND"] * 4
    assert error_code(a.act("end", "0" * 32)) == "RATE_LIMITED"
    # Payload errors come before the rate limit and cost nothing.
    assert error_code(a.call("call:end", {})) == "INVALID_PAYLOAD"
    time.sleep(1.1)
    assert a.initiate(bob.name)["ok"]


def test_one_noisy_socket_does_not_limit_another(strict, clients):
    alice, bob = strict.register("alice"), strict.register("bob")
    noisy = clients.device(alice)
    quiet = clients.device(bob)
    for _ in range(8):
        noisy.emit("call:end", {"callId": "0" * 32})
    assert noisy.wait("call:error", where=lambda e: e["code"] == "RATE_LIMITED")
    assert quiet.initiate(alice.name)["ok"]
