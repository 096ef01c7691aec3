"""Stand-in for CircuitPython's socketpool: real host sockets, reachable only once the
stand-in radio has joined. Sockets have CircuitPython's timeout shape: a timed-out
recv_into raises OSError(ETIMEDOUT) instead of CPython's TimeoutError."""
import errno
import socket as _socket

from _standin_net import NET


class _Socket(_socket.socket):
    def recv_into(self, buffer, nbytes=0, flags=0):
        try:
            return super().recv_into(buffer, nbytes, flags)
        except TimeoutError:
            raise OSError(errno.ETIMEDOUT, "ETIMEDOUT") from None

    def recvfrom_into(self, buffer, nbytes=0, flags=0):
        try:
            return super().recvfrom_into(buffer, nbytes, flags)
        except TimeoutError:
            raise OSError(errno.ETIMEDOUT, "ETIMEDOUT") from None

    def sendto(self, data, address):
        host, port = address
        if self.type == _socket.SOCK_DGRAM and port == 123 and NET.get("ntp_port"):
            address = ("127.0.0.1", NET["ntp_port"])  # the test LAN routes NTP to its server
        return super().sendto(data, address)


class SocketPool:
    AF_INET = _socket.AF_INET
    SOCK_STREAM = _socket.SOCK_STREAM
    SOCK_DGRAM = _socket.SOCK_DGRAM
    IPPROTO_IP = 0
    IPPROTO_TCP = _socket.IPPROTO_TCP
    TCP_NODELAY = _socket.TCP_NODELAY
    SOL_SOCKET = _socket.SOL_SOCKET
    SO_REUSEADDR = _socket.SO_REUSEADDR

    class gaierror(OSError):
        pass

    def __init__(self, radio):
        self._radio = radio

    def _online(self):
        if not self._radio.connected:
            raise OSError(errno.EHOSTUNREACH, "EHOSTUNREACH")

    def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):
        """IPv4 only, as CircuitPython: [(AF_INET, type, proto, '', (ip, port))]."""
        self._online()
        try:
            infos = _socket.getaddrinfo(host, port, _socket.AF_INET, type or _socket.SOCK_STREAM)
        except _socket.gaierror as e:
            raise self.gaierror(-2, "Name or service not known") from e
        return [(self.AF_INET, t, p, "", addr) for _f, t, p, _c, addr in infos[:1]]

    def socket(self, family=AF_INET, type=SOCK_STREAM, proto=IPPROTO_IP):
        self._online()
        return _Socket(family, type, proto)
