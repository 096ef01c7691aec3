"""Boots a CPython process as a CircuitPython board would run code.py (test-only).

Put this folder first on PYTHONPATH of a CPython subprocess whose working directory is a
CIRCUITPY-like drive. Only what cannot exist on a PC is stood in for: the Wi-Fi radio
(wifi, socketpool), the RTC (rtc, and the time module that reads it), and the chip
(microcontroller, watchdog). TLS is CPython's real ssl module; sockets are real.

Where CircuitPython's built-in modules differ from CPython's in a way the firmware can
see, the difference is reproduced here, each with its reason:
- sys.implementation.name is "circuitpython": the firmware picks its port and skips
  azure_edge.net.install() on that name, exactly as on a board. Renaming is the smallest
  seam: no test-only branch in the firmware.
- `time` is CircuitPython's: time(), localtime() and mktime() read the RTC (which boots at
  2000-01-01 until NTP sets it), and there is no gmtime().
- `socket` does not exist on CircuitPython (socketpool replaces it): importing it fails.
- `hashlib` has only new(name, data), as in CircuitPython 10.1+ (sha1, sha256); 9.x: sha1 only.
- os.getenv() reads settings.toml from the drive root, not the process environment.
- ssl sockets report a read timeout as OSError(ETIMEDOUT) and keep handshaking through
  timeouts, as CircuitPython's mbedTLS sockets do (shared-module/ssl/SSLSocket.c).
- ssl handshakes (and so verifies) in SSLSocket.connect() only, never in wrap_socket(): a
  socket wrapped after its connect is never verified (SSLSocket.c: do_handshake is called
  from connect and accept). load_verify_locations takes cadata as text only (PEM, one or
  more certificates: mbedtls_x509_crt_parse reads every block), no cafile or capath.
- With {"readonly": true} in EDGEKIT_STANDIN_NET, CIRCUITPY is read-only to code, as on a
  board whose boot.py did not remount it: writes raise OSError(EROFS) and
  storage.getmount("/").readonly is True (extmod/vfs_fat.c verify_fs_writable).

The test network (access point, its credentials, how often joins fail, the test's NTP
server) comes as JSON in EDGEKIT_STANDIN_NET; see wifi.py and socketpool.py.
"""
import errno
import json
import os
import ssl
import sys
import types

# CPython evaluates annotations when it defines functions; CircuitPython drops them.
# adafruit_connection_manager imports its annotation names only off CircuitPython, so
# import it once before the rename.
import adafruit_connection_manager  # noqa: F401

import _standin_clock

_impl = dict(vars(sys.implementation))
_impl["name"] = "circuitpython"
sys.implementation = types.SimpleNamespace(**_impl)

# --- ssl: real OpenSSL; only the timeout behaviour takes CircuitPython's shape ----------
_HANDSHAKE_S = 10


class _CircuitPythonSSLSocket(ssl.SSLSocket):
    def connect(self, address):
        # CircuitPython's handshake loops on WANT_READ until it completes or fails; it is the
        # only place a handshake happens (wrap_socket below never does one).
        timeout = self.gettimeout()
        self.settimeout(_HANDSHAKE_S)
        try:
            super().connect(address)
            self.do_handshake()
        finally:
            self.settimeout(timeout)

    def recv_into(self, buffer, nbytes=0, flags=0):
        try:
            return super().recv_into(buffer, nbytes, flags)
        except TimeoutError:
            raise OSError(errno.ETIMEDOUT, "ETIMEDOUT") from None

    def send(self, data, flags=0):
        try:
            return super().send(data, flags)
        except TimeoutError:
            raise OSError(errno.EAGAIN, "EAGAIN") from None


ssl.SSLContext.sslsocket_class = _CircuitPythonSSLSocket
_host_wrap_socket = ssl.SSLContext.wrap_socket
_host_load_verify_locations = ssl.SSLContext.load_verify_locations


def _wrap_socket(self, sock, *, server_side=False, server_hostname=None):
    return _host_wrap_socket(self, sock, server_side=server_side, server_hostname=server_hostname,
                             do_handshake_on_connect=False)


def _load_verify_locations(self, cafile=None, capath=None, cadata=None):
    if cafile is not None:
        raise NotImplementedError("cafile")
    if capath is not None:
        raise NotImplementedError("capath")
    if not isinstance(cadata, str):
        raise TypeError("can't convert '%s' object to str implicitly" % type(cadata).__name__)
    return _host_load_verify_locations(self, cadata=cadata)


ssl.SSLContext.wrap_socket = _wrap_socket
ssl.SSLContext.load_verify_locations = _load_verify_locations

# --- os.getenv: settings.toml on the drive root ----------------------------------------
_settings = _standin_clock.read_settings("settings.toml")


def _getenv(key, default=None):
    return _settings.get(key, default)


os.getenv = _getenv

# --- CIRCUITPY read-only to code (no remount in boot.py): every write refused ------------
if json.loads(os.environ.get("EDGEKIT_STANDIN_NET", "{}")).get("readonly"):
    import builtins
    import errno as _errno

    _drive = os.getcwd()

    def _on_drive(path):
        return os.path.abspath(os.fspath(path)).startswith(_drive)

    def _refuse(fn, arg_count=1):
        def guarded(*args, **kw):
            if any(isinstance(a, (str, bytes, os.PathLike)) and _on_drive(a) for a in args[:arg_count]):
                raise OSError(_errno.EROFS, "Read-only filesystem")
            return fn(*args, **kw)
        return guarded

    _host_open = builtins.open

    def _open(file, mode="r", *args, **kw):
        if any(c in mode for c in "wax+") and isinstance(file, (str, bytes, os.PathLike)) \
                and _on_drive(file):
            raise OSError(_errno.EROFS, "Read-only filesystem")
        return _host_open(file, mode, *args, **kw)

    builtins.open = _open
    for _name, _n in (("mkdir", 1), ("remove", 1), ("rmdir", 1), ("rename", 2)):
        setattr(os, _name, _refuse(getattr(os, _name), _n))

# --- time: CircuitPython's module, reading the stand-in RTC ----------------------------
sys.modules["time"] = _standin_clock.circuitpython_time()

# --- hashlib: CircuitPython's has only new(name, data); "sha256" from 10.1 (9.x: sha1 only) --
import hashlib as _host_hashlib  # noqa: E402


# {"circuitpython": "9"} in EDGEKIT_STANDIN_NET plays a 9.x board, whose hashlib has sha1 only.
_HASHES = ("sha1",) if json.loads(os.environ.get("EDGEKIT_STANDIN_NET", "{}")).get(
    "circuitpython") == "9" else ("sha1", "sha256")


def _hashlib_new(name, data=b""):
    if name not in _HASHES:
        raise ValueError("Unsupported hash algorithm")
    return _host_hashlib.new(name, data)


sys.modules["hashlib"] = types.SimpleNamespace(new=_hashlib_new)

# --- no socket module on CircuitPython (socketpool keeps its own reference) ------------
import socketpool  # noqa: E402,F401  (binds the real socket before it disappears)

sys.modules["socket"] = None

# The supervisor joins the Wi-Fi named in settings.toml before code.py starts.
import wifi  # noqa: E402

wifi.radio._auto_connect(_getenv("CIRCUITPY_WIFI_SSID"), _getenv("CIRCUITPY_WIFI_PASSWORD"))

# --- gc: CircuitPython reports its heap; CPython has no such figure --------------------
import gc  # noqa: E402

HEAP_FREE = 123456  # the stand-in board's free heap, in bytes
gc.mem_free = lambda: HEAP_FREE
