"""Stand-in for CircuitPython's wifi module: a radio that joins the test's access point.

Only the radio is pretend; once joined, traffic goes through the host's real network
stack (socketpool.py).
"""
import ipaddress

from _standin_net import NET


class _Network:
    def __init__(self, ssid, rssi):
        self.ssid = ssid
        self.rssi = rssi


class Radio:
    def __init__(self):
        self.enabled = True
        self.connected = False
        self.ipv4_address = None
        self.ap_info = None
        self.joins = 0

    def connect(self, ssid, password=None, *, channel=0, bssid=None, timeout=None):
        """Join like CircuitPython: ConnectionError when the network is absent or refuses."""
        self.joins += 1
        print("[stand-in wifi] join %d: '%s'" % (self.joins, ssid))
        if self.joins <= NET.get("fail_joins", 0) or ssid != NET.get("ssid"):
            raise ConnectionError("No network with that ssid")
        if (password or "") != NET.get("password", ""):
            raise ConnectionError("Authentication failure")
        self.connected = True
        self.ipv4_address = ipaddress.IPv4Address("127.0.0.1")
        self.ap_info = _Network(ssid, NET.get("rssi", -60))
        print("[stand-in wifi] joined '%s'" % ssid)

    def _auto_connect(self, ssid, password):
        # What the supervisor does with CIRCUITPY_WIFI_SSID before code.py runs.
        if ssid:
            try:
                self.connect(ssid, password)
            except ConnectionError as e:
                print("[stand-in wifi] settings.toml join failed: %s" % e)


radio = Radio()
