"""The fault proxy itself, against a plain TCP echo server: delay line, order, and each fault."""
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner

from edgekit.cli import main
from edgekit.faultproxy import FaultProxy, FaultProxyError, parse_target

from device_helpers import free_port, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class EchoServer:
    """Echoes every byte back; records what it received and how each connection ended."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.received = bytearray()
        self.endings = []  # "eof" or "reset" per connection
        self._conns = []
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self._conns.append(conn)
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn):
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    self.endings.append("eof")
                    break
                self.received += data
                conn.sendall(data)
        except ConnectionResetError:
            self.endings.append("reset")
        except OSError:
            self.endings.append("error")
        conn.close()

    def close(self):
        self._stop = True
        self.sock.close()
        for c in self._conns:
            c.close()


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


def _recv_exactly(sock, n):
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise EOFError(f"closed after {len(out)} of {n} bytes")
        out += chunk
    return out


def _rtt(port, rounds=5):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        best = None
        for _ in range(rounds):
            t0 = time.perf_counter()
            s.sendall(b"x")
            _recv_exactly(s, 1)
            took = time.perf_counter() - t0
            best = took if best is None else min(best, took)
        return best


def test_forwards_and_counts(echo):
    payload = os.urandom(1 << 20)
    with FaultProxy("127.0.0.1", echo.port) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            threading.Thread(target=s.sendall, args=(payload,), daemon=True).start()
            assert _recv_exactly(s, len(payload)) == payload
        assert proxy.connections == 1
        assert proxy.bytes_up == len(payload)
        wait_for(lambda: proxy.bytes_down == len(payload), 5, "downstream count")


def test_delay_adds_to_each_direction(echo):
    direct = _rtt(echo.port)
    with FaultProxy("127.0.0.1", echo.port, delay=0.05) as proxy:
        delayed = _rtt(proxy.port)
    assert delayed >= 0.1 > direct, (direct, delayed)


def test_delay_line_keeps_order_and_pipelining(echo):
    # 20 round trips of 100 ms each would take 2 s stop-and-wait; a delay line takes ~0.1 s.
    with FaultProxy("127.0.0.1", echo.port, delay=0.05) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            msgs = [b"%04d" % i for i in range(20)]
            t0 = time.perf_counter()
            for m in msgs:
                s.sendall(m)
                time.sleep(0.005)
            got = _recv_exactly(s, 80)
            took = time.perf_counter() - t0
    assert got == b"".join(msgs)
    assert 0.1 <= took < 1.0, took


def test_drop_all_resets_both_sides(echo):
    with FaultProxy("127.0.0.1", echo.port) as proxy:
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        s.sendall(b"hi")
        assert _recv_exactly(s, 2) == b"hi"
        proxy.drop_all()
        with pytest.raises(ConnectionResetError):
            s.recv(10)
        s.close()
        wait_for(lambda: echo.endings == ["reset"], 5, "gateway side reset")
        # New connections still work after a drop.
        assert _rtt(proxy.port, rounds=1) < 5
        assert proxy.connections == 2


def test_stall_holds_traffic_until_resume(echo):
    with FaultProxy("127.0.0.1", echo.port) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
            proxy.stall()
            s.sendall(b"held")
            s.settimeout(0.5)
            with pytest.raises(socket.timeout):
                s.recv(10)
            assert bytes(echo.received) == b""
            proxy.resume()
            s.settimeout(5)
            assert _recv_exactly(s, 4) == b"held"


def test_stall_for_seconds_resumes_itself(echo):
    with FaultProxy("127.0.0.1", echo.port) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
            proxy.stall(0.4)
            t0 = time.perf_counter()
            s.sendall(b"later")
            assert _recv_exactly(s, 5) == b"later"
            assert time.perf_counter() - t0 >= 0.3


def test_blackhole_accepts_but_never_forwards(echo):
    with FaultProxy("127.0.0.1", echo.port) as proxy:
        proxy.blackhole(True)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
            s.sendall(b"anyone?")  # the write succeeds: half-open from this side
            s.settimeout(0.5)
            with pytest.raises(socket.timeout):
                s.recv(10)
        assert echo.accepted == 0
        proxy.blackhole(False)
        assert _rtt(proxy.port, rounds=1) < 5
        assert echo.accepted == 1 and proxy.connections == 2


def test_reset_mid_packet_forwards_exactly_n_bytes(echo):
    with FaultProxy("127.0.0.1", echo.port) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
            proxy.reset_mid_packet(5)
            s.sendall(b"0123456789")
            with pytest.raises((ConnectionResetError, EOFError)):
                # The first 5 bytes may come back before the reset lands.
                _recv_exactly(s, 10)
        wait_for(lambda: "reset" in echo.endings, 5, "gateway side reset")
        assert bytes(echo.received) == b"01234"


def test_slow_read_paces_the_sender(echo):
    with FaultProxy("127.0.0.1", echo.port) as proxy:
        proxy.slow_read(20000)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            t0 = time.perf_counter()
            s.sendall(b"z" * 20000)
            assert _recv_exactly(s, 20000) == b"z" * 20000
            took = time.perf_counter() - t0
        proxy.slow_read(None)
        assert took >= 0.8, took  # 20000 B at 20000 B/s read on each side


def test_bad_values_are_refused():
    with pytest.raises(FaultProxyError, match="HOST:PORT"):
        parse_target("localhost")
    with pytest.raises(FaultProxyError, match="delay"):
        FaultProxy("127.0.0.1", 1, delay=-1)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        proxy = FaultProxy("127.0.0.1", 1, listen_port=busy.getsockname()[1])
        with pytest.raises(FaultProxyError, match="cannot listen"):
            proxy.start()
        proxy.stop()  # nothing to stop, and no error
        with pytest.raises(FaultProxyError, match="not running"):
            proxy.drop_all()
    finally:
        busy.close()


def test_cli_one_line_error():
    result = CliRunner().invoke(main, ["faultproxy", "--target", "nohost"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == ["error: target 'nohost' is not HOST:PORT (e.g. 127.0.0.1:8883)"]


def test_cli_serves_with_delay(echo):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "faultproxy", "--target",
                             f"127.0.0.1:{echo.port}", "--listen", str(port), "--delay-ms", "30"],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert f"127.0.0.1:{port}" in line and "30 ms" in line
        assert _rtt(port, rounds=2) >= 0.06
    finally:
        proc.terminate()
        proc.wait(5)


def test_stall_one_direction_holds_only_the_answers(echo):
    with FaultProxy("127.0.0.1", echo.port) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
            proxy.stall(direction="down")
            s.sendall(b"ping")
            wait_for(lambda: bytes(echo.received) == b"ping", 5, "the request at the server")
            s.settimeout(0.5)
            with pytest.raises(socket.timeout):
                s.recv(10)  # the answer is held
            proxy.resume()
            s.settimeout(5)
            assert _recv_exactly(s, 4) == b"ping"
        with pytest.raises(FaultProxyError, match="direction"):
            proxy.stall(direction="sideways")
