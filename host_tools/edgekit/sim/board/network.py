# Stand-in for MicroPython's `network` module on the simulated board.
# The radio is the one thing that cannot exist here: the sim runs on the host,
# whose own network is already up, so a WLAN that has been activated and asked
# to connect reports connected at once. Everything else mirrors the esp32 port
# (constants, the "Wifi Not Started" error) so firmware bugs show up here too.
import os

STA_IF = 0
AP_IF = 1
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_NO_AP_FOUND = 201
STAT_WRONG_PASSWORD = 202
_RSSI = -50

_hostname = "edgekit-sim"


def hostname(name=None):
    global _hostname
    if name is None:
        return _hostname
    _hostname = name


class WLAN:
    def __init__(self, interface_id=STA_IF):
        self._if = interface_id
        self._active = False
        self._ssid = None

    def active(self, is_active=None):
        if is_active is None:
            return self._active
        self._active = bool(is_active)
        if not self._active:
            self._ssid = None

    def connect(self, ssid=None, key=None, bssid=None):
        if not self._active:
            raise OSError("Wifi Not Started")
        # EDGEKIT_SIM_WIFI=down lets a test see how firmware copes with no access point.
        if os.getenv("EDGEKIT_SIM_WIFI") == "down":
            self._ssid = None
            return
        self._ssid = ssid

    def disconnect(self):
        self._ssid = None

    def isconnected(self):
        return self._active and self._ssid is not None

    def status(self, param=None):
        if param == "rssi":
            if not self.isconnected():
                raise OSError("STA is not connected")
            return _RSSI
        if param is not None:
            raise ValueError("unknown status param")
        if not self._active:
            return STAT_IDLE
        if self._ssid is None:
            return STAT_NO_AP_FOUND if os.getenv("EDGEKIT_SIM_WIFI") == "down" else STAT_IDLE
        return STAT_GOT_IP

    def ifconfig(self, config=None):
        if config is not None:
            return
        if not self.isconnected():
            return ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")
        return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")

    def config(self, *args, **kwargs):
        if kwargs:
            return
        if not args:
            raise TypeError("config() needs a parameter name")
        name = args[0]
        if name == "mac":
            return b"\x02\xed\x9e\x51\x00\x01"
        if name in ("ssid", "essid"):
            return self._ssid or ""
        if name in ("hostname", "dhcp_hostname"):
            return _hostname
        if name == "txpower":
            return 20
        raise ValueError("unknown config param")

    def scan(self):
        if not self._active:
            raise OSError("Wifi Not Started")
        return []
