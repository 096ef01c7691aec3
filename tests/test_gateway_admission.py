"""Issue 25: connections that have not authenticated are bounded, overall and per address.

Idle TCP connections once held the gateway's file descriptors until a registered device could
not connect. The bounds here are small so the test runs in seconds; the defaults and how they
follow the open-file limit are checked on admission.limits.
"""
import resource
import time

import pytest
import socket

from edgekit.gateway import admission
from gateway_helpers import GatewayProcess, RawDevice


def idle(gw, source):
    return socket.create_connection(("127.0.0.1", gw.port), timeout=5, source_address=(source, 0))


def closed_at_once(sock):
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def device_from(gw, cs, source):
    # RawDevice from a given loopback source address (127.0.0.0/8 is all local on Linux).
    real = socket.create_connection
    socket.create_connection = lambda addr, timeout=None: real(addr, timeout, source_address=(source, 0))
    try:
        return RawDevice.connect_as(gw, cs)
    finally:
        socket.create_connection = real


def test_limits_follow_the_open_file_limit():
    assert admission.limits(100, open_files=1024) == (512, 128)
    assert admission.limits(100, open_files=250) == (250 - 100 - admission.FILES_KEPT,) * 2  # 86, 86
    assert admission.limits(100, open_files=100) == (1, 1)  # never zero: one device can still try
    assert admission.limits(100, open_files=resource.RLIM_INFINITY) == (512, 128)


def test_idle_connections_are_bounded_per_address_and_overall(tmp_path):
    gw = GatewayProcess(tmp_path, devices=(), options={"max_waiting": 5, "max_waiting_per_address": 3})
    cs = gw.add_device("patient")
    gw.start()
    held = []
    try:
        held += [idle(gw, "127.0.0.2") for _ in range(3)]
        extra = idle(gw, "127.0.0.2")
        held.append(extra)
        assert closed_at_once(extra)  # a fourth from the same address
        dev, ack = device_from(gw, cs, "127.0.0.3")  # another address still gets in
        assert ack == (0, 0)
        held += [idle(gw, "127.0.0.4") for _ in range(2)]  # 5 waiting in all; the device does not count
        late = idle(gw, "127.0.0.5")
        held.append(late)
        assert closed_at_once(late)
        dev.sock.close()
        for s in held:
            s.close()
        dev, ack = device_from(gw, cs, "127.0.0.5")  # room again once they close
        assert ack == (0, 0)
        dev.sock.close()
        assert "are waiting for TLS or CONNECT" in gw.output()
    finally:
        for s in held:
            s.close()
        gw.stop()


def test_serve_keeps_the_waiting_bound_below_its_open_file_limit(tmp_path):
    gw = GatewayProcess(tmp_path, devices=())
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (400, hard))  # inherited by the serve it starts
    try:
        gw.start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        assert f"at most {400 - 100 - admission.FILES_KEPT} connections wait for TLS or CONNECT" in gw.output()
        assert "(open-file limit 400)" in gw.output()
    finally:
        gw.stop()


def test_token_less_control_connections_reopened_as_they_close_never_starve_status(gateway_for_control):
    # 40 idle connections without a token, each reopened the moment the gateway closes it: the
    # token is checked first, so `gateway status` is still answered every time.
    import threading
    from edgekit.gateway import control, hub
    gw = gateway_for_control
    stop, opened = threading.Event(), threading.Event()

    def pester():
        socks = [socket.create_connection(("127.0.0.1", gw.control_port)) for _ in range(40)]
        opened.set()
        while not stop.is_set():
            for i, s in enumerate(socks):
                s.settimeout(0.001)
                try:
                    if s.recv(1) == b"":
                        raise ConnectionResetError
                except socket.timeout:
                    continue
                except OSError:
                    s.close()
                    socks[i] = socket.create_connection(("127.0.0.1", gw.control_port))
        for s in socks:
            s.close()
    thread = threading.Thread(target=pester, daemon=True)
    thread.start()
    try:
        assert control.MAX_CONNECTIONS < 40
        assert opened.wait(10)
        # Asked again and again for a while: the first asks could beat the gateway's accepts of
        # the idle connections (then a slot taken before the token check went unseen).
        asked, until = 0, time.monotonic() + 2
        while asked < 5 or time.monotonic() < until:
            assert hub.status(gw.data) == []  # no device connected, and answered
            asked += 1
    finally:
        stop.set()
        thread.join(10)


@pytest.fixture
def gateway_for_control(tmp_path):
    gw = GatewayProcess(tmp_path, devices=()).start()
    yield gw
    gw.stop()
