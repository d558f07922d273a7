"""The harness itself: what keeps the other tests from failing for reasons of their own."""

import socket

import conftest
from conftest import Daemon


def test_a_port_taken_before_the_daemon_binds_it_is_replaced_by_another(monkeypatch):
    # `free_port` can only say a port was free when it looked; here it hands out one that is
    # taken by the time the daemon binds it, then free ones.
    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    real = conftest.free_port
    ports = iter([taken])
    monkeypatch.setattr(conftest, "free_port", lambda: next(ports, None) or real())
    daemon = Daemon()
    try:
        assert daemon.port != taken
        assert daemon.http("GET", "/healthz").status_code == 200
        assert conftest.ADDRESS_IN_USE in daemon.log_text(), "the first start met the taken port"
    finally:
        daemon.close()
        squatter.close()
