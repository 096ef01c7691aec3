"""Reaching the board's filesystem: over its REPL with mpremote, or through a mounted drive.

Both links answer the same questions (what is on the board, by hash), make the same
changes (mkdir, write, remove, update the manifest) and count the bytes they send.
"""
import ast
import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path

from edgekit import sha256_file
from edgekit.deploy.manifest import MANIFEST_VERSION, MAX_BYTES, UNREADABLE, trusted_entries, untrusted_reason
from edgekit.deploy.plan import MANIFEST, DeployError
from edgekit.monitor import garbled, read_available

CHUNK = 512

# Defined once per session on the board: hash a file, and report hashes of paths (files
# only: a folder or an unreadable path is absent), trusting a manifest entry only while the
# file still has the size it recorded. _ekm reads
# the manifest as it is (None: none; UNREADABLE: not JSON, or too big to be edgekit's); the
# host checks it before the board acts on any of it (_ekM: the entries the host trusts).
_BOARD_HELPERS = """import os,json,hashlib,binascii
def _ekh(p):
 d=hashlib.sha256();b=bytearray(512);v=memoryview(b)
 with open(p,'rb') as f:
  while 1:
   n=f.readinto(b)
   if not n:break
   d.update(v[:n])
 return binascii.hexlify(d.digest()).decode()
def _ekq(ps,m):
 r={}
 for p in ps:
  try:
   t=os.stat(p)
   if t[0]&0x4000:continue
   e=m.get(p)
   r[p]=e[0] if e and e[1]==t[6] else _ekh(p)
  except OSError:pass
 return r
def _ekm():
 try:
  if os.stat(%r)[6]>%d:return %r
  f=open(%r)
 except OSError:return None
 try:return json.load(f)
 except Exception:return %r
 finally:f.close()
_ekM={}
""" % (MANIFEST, MAX_BYTES, UNREADABLE, MANIFEST, UNREADABLE)

# Rewrites the whole manifest from the entries the host trusts, so nothing it ignored survives.
_UPDATE_MANIFEST = """_ekM.update(json.loads(%r))
for p in json.loads(%r):_ekM.pop(p,None)
with open(%r,'w') as f:json.dump({'version':%d,'files':_ekM},f)
try:os.remove(%r)
except OSError:pass
os.rename(%r,%r)
"""


class _CountingSerial:
    """A pyserial port that counts the bytes written to the board."""

    def __init__(self, port):
        self._port = port
        self.sent = 0

    def write(self, data):
        self.sent += len(data)
        return self._port.write(data)

    def __getattr__(self, name):
        return getattr(self._port, name)


class ReplLink:
    """The board over its serial REPL, driven by mpremote's own transport."""

    def __init__(self, url, baud=115200):
        from mpremote.transport import TransportError
        from mpremote.transport_serial import SerialTransport

        self.url = url
        self._error = TransportError
        try:
            self.transport = SerialTransport(url, baudrate=baud)
        except TransportError:
            raise DeployError(f"cannot open {url}: is the board plugged in and the port free?"
                              " (close any other monitor or mpremote session)") from None
        self.baud = baud
        self.manifest = None  # the trusted entries of the board's manifest, once read
        self.manifest_notes = []
        self.counter = _CountingSerial(self.transport.serial)
        self.transport.serial = self.counter
        for attempt in (1, 2):
            heard = io.StringIO()
            try:
                # A soft reset stops main.py and gives a clean heap, as mpremote does. mpremote
                # prints what it heard when that fails: kept for the diagnosis, not shown raw.
                with contextlib.redirect_stdout(heard):
                    self.transport.enter_raw_repl(soft_reset=True)
                    self.transport.exec(_BOARD_HELPERS)  # its raw-paste fallback prints too
                break
            except (self._error, OSError) as e:
                said = _heard_bytes(heard.getvalue())
                # A board still starting (just reset, or a fresh sim) can miss the Ctrl-A and then
                # answer with the friendly prompt: its boot ends in ">>> ", so it is ready now. Once.
                if attempt == 1 and isinstance(e, self._error) and said.rstrip().endswith(b">>>"):
                    continue
                self.close()
                raise DeployError(no_repl_reason(url, baud, said, e)) from None

    @property
    def sent(self):
        """Bytes written to the board so far (commands and data)."""
        return self.counter.sent

    def _exec(self, code):
        try:
            # mpremote prints the bytes it got (b'' when none) on a failed raw-REPL step: the
            # error line below says it, and stdout is for edgekit's own output.
            with contextlib.redirect_stdout(io.StringIO()):
                return self.transport.exec(code)
        except self._error as e:
            raise DeployError(f"the board refused a deploy step: {_one_line(e)}") from None

    def board_info(self):
        """{'name', 'version', 'mpy'} of the runtime on the board."""
        out = self._exec("import sys;print(json.dumps({'name':sys.implementation.name,"
                         "'version':list(sys.implementation.version[:3]),"
                         "'mpy':getattr(sys.implementation,'_mpy',None)}))")
        return json.loads(out)

    def romfs_partitions(self):
        """How many ROMFS partitions the board's firmware has (0: none, or no ROMFS support)."""
        return int(self._exec("import vfs\nprint(vfs.rom_ioctl(1) if hasattr(vfs,'rom_ioctl') else 0)"))

    def read_manifest(self):
        """(entries of the board's manifest deploy may act on, lines saying what was not trusted).

        Read once per session; the board keeps the trusted entries (_ekM) for the hashing and
        the rewrite, so an entry the host ignored is never acted on there either.
        """
        if self.manifest is None:
            doc = json.loads(self._exec("_ekR=_ekm();print(json.dumps(_ekR))"))
            self.manifest, self.manifest_notes = trusted_entries(doc)
            listed = doc.get("files") if self.manifest and isinstance(doc, dict) else {}
            dropped = sorted(set(listed) - set(self.manifest))
            if self.manifest:
                # Only a few bytes when nothing was ignored: the board's own copy, minus the ignored.
                self._exec("_ekM=_ekR['files']\nfor p in json.loads(%r):del _ekM[p]\n" % json.dumps(dropped)
                           if dropped else "_ekM=_ekR['files']")
        return self.manifest, self.manifest_notes

    def manifest_entry(self, key):
        """The trusted manifest's [sha256, size] for key, or None."""
        return self.read_manifest()[0].get(key)

    def write_romfs(self, image):
        """Write a ROMFS image to partition 0 (mpremote's own writer)."""
        from edgekit.deploy.romfs import write_image

        try:
            write_image(self.transport, image)
        except (self._error, SystemExit) as e:  # mpremote exits on an image too big for the partition
            raise DeployError(f"writing the ROMFS image failed: {_one_line(e)}") from None

    def remote_hashes(self, paths, verify=False):
        """Hashes of the planned paths and the trusted manifest's paths that exist on the board."""
        listed = set(self.read_manifest()[0])
        found = json.loads(self._exec("print(json.dumps(_ekq(list(_ekM),%s)))" % ("{}" if verify else "_ekM")))
        unknown = [p for p in paths if p not in listed]
        if unknown:
            # Files the manifest does not list (first deploy, or files put there by hand):
            # hash them on the board so an identical file is not sent again.
            found.update(self.current_hashes(unknown)[0])
        return found

    def current_hashes(self, paths):
        """({path: sha256} of these files as they are now, hashed on the board; {} refused)."""
        return json.loads(self._exec("print(json.dumps(_ekq(%s,{})))" % _board_list(paths))), {}

    def make_dirs(self, dirs):
        """Create these directories (parents first); existing ones are fine."""
        if dirs:
            self._exec("for d in %r:\n try:os.mkdir(d)\n except OSError:pass\n" % sorted(dirs, key=len))

    def write(self, path, local):
        """Copy a local file to path; a partial copy never replaces the old file."""
        tmp = path + ".part"
        try:
            self.transport.fs_writefile(tmp, Path(local).read_bytes(), chunk_size=CHUNK)
        except (self._error, OSError) as e:
            raise DeployError(f"writing {path} on the board failed: {_one_line(e)}"
                              " (a CircuitPython drive mounted over USB is read-only to the REPL: use --drive)") from None
        self._exec("try:os.remove(%r)\nexcept OSError:pass\nos.rename(%r,%r)\n" % (path, tmp, path))

    def remove(self, paths):
        """Delete files (those an earlier deploy put there and this one no longer ships)."""
        if paths:
            _refuse_untrusted(paths)
            self._exec("for p in %s:\n try:os.remove(p)\n except OSError:pass\n" % _board_list(sorted(paths)))

    def clear(self, paths):
        """Remove these state files if there; True when one was."""
        out = self._exec("for p in(%s):\n try:os.remove(p);print(1)\n except:pass" % ",".join(map(repr, paths)))
        return bool(out.strip())

    def update_manifest(self, entries, removed):
        """Merge {path: [sha256, size]} into the trusted manifest, drop removed paths, write it whole."""
        if not entries and not removed and not self.manifest_notes:
            return  # a manifest that held untrusted entries is rewritten without them
        self.read_manifest()
        self.manifest.update(entries)
        for p in removed:
            self.manifest.pop(p, None)
        tmp = MANIFEST + ".part"
        self._exec(_UPDATE_MANIFEST % (json.dumps(entries), json.dumps(sorted(removed)), tmp,
                                       MANIFEST_VERSION, MANIFEST, tmp, MANIFEST))

    def soft_reset(self, timeout=10):
        """Leave the raw REPL and soft-reset, so the board runs main.py (code.py) from the start."""
        self.transport.exit_raw_repl()
        # Ctrl-D only once the friendly REPL shows its prompt, as mpremote sends its own
        # soft-reset Ctrl-D only after the raw REPL's prompt: a console that is still
        # switching modes never gets the byte too early, and a board that stays in its raw
        # REPL is told apart from one that does not reset.
        seen = self.transport.read_until(1, b">>> ", timeout=timeout)
        if not seen.endswith(b">>> "):
            raise DeployError(f"the board did not leave its raw REPL (Ctrl-B) within {timeout} s;"
                              " press its reset button")
        self.counter.write(b"\x04")
        seen = self.transport.read_until(1, b"soft reboot", timeout=timeout)
        if not seen.endswith(b"soft reboot"):
            raise DeployError(f"the board did not soft-reset within {timeout} s; press its reset button")

    def monitor(self, out=None, seconds=None):
        """Copy the board's console to out (stdout) until Ctrl-C or for `seconds`."""
        out = out or sys.stdout.buffer
        end = None if seconds is None else time.monotonic() + seconds
        try:
            while end is None or time.monotonic() < end:
                data = read_available(self.counter)
                if data:
                    out.write(data)
                    out.flush()
        except KeyboardInterrupt:
            pass

    def close(self):
        """Close the port (the board keeps running)."""
        try:
            self.transport.close()
        except OSError:
            pass


class DriveLink:
    """A CircuitPython board through its mounted CIRCUITPY drive (a local folder).

    Every path is checked against the drive's root before it is read, written or removed:
    a symlink on the drive is never followed, so nothing off the drive is touched.
    """

    def __init__(self, root):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DeployError(f"{root} is not a mounted drive folder (look for CIRCUITPY under /media or /Volumes)")
        if not os.access(self.root, os.W_OK):
            raise DeployError(f"{root} is not writable: remount the CIRCUITPY drive read-write")
        self._real_root = self.root.resolve()
        self.sent = 0
        self.url = str(self.root)
        self.manifest = None  # the trusted entries of the drive's manifest, once read
        self.manifest_notes = []

    def off_drive(self, path):
        """Why board path would lead off the drive (a '..', a symlink on the way), or None."""
        rel = path.lstrip("/")
        if not rel or "\0" in rel or "\\" in rel or any(part in ("", ".", "..") for part in rel.split("/")):
            return "it is not a plain path on the drive"
        here = self.root
        for part in rel.split("/"):
            here = here / part
            if here.is_symlink():
                return f"{here} is a symlink"
        if not here.resolve().is_relative_to(self._real_root):
            return f"it resolves to {here.resolve()}"
        return None

    def _local(self, path):
        why = self.off_drive(path)
        if why:
            raise DeployError(f"refusing {path}: {why}, which leads off the drive {self.root};"
                              " the drive is not trusted (remove the symlink)")
        return self.root / path.lstrip("/")

    def read_manifest(self):
        """(entries of the drive's manifest deploy may act on, lines saying what was not trusted)."""
        if self.manifest is None:
            self.manifest, self.manifest_notes = trusted_entries(self._manifest_doc())
        return self.manifest, self.manifest_notes

    def _manifest_doc(self):
        path = self._local(MANIFEST)
        try:
            if path.stat().st_size > MAX_BYTES:
                return UNREADABLE
            text = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError:
            return UNREADABLE
        try:
            return json.loads(text)
        except ValueError:
            return UNREADABLE

    def manifest_entry(self, key):
        """The trusted manifest's [sha256, size] for key, or None."""
        return self.read_manifest()[0].get(key)

    def board_info(self):
        """A drive cannot say which runtime it belongs to; CircuitPython is assumed."""
        return {"name": "circuitpython", "version": None, "mpy": None}

    def remote_hashes(self, paths, verify=False):
        """Hashes of planned files on the drive (read locally: the drive is mounted here)."""
        found = {}
        for p in paths:
            local = self._local(p)
            if local.is_file():
                found[p] = sha256_file(local)
        return found

    def current_hashes(self, paths):
        """({path: sha256} of these files as they are now, {path: why} of those off the drive)."""
        found, refused = {}, {}
        for p in paths:
            why = self.off_drive(p)
            if why:
                refused[p] = why
            elif self._local(p).is_file():
                found[p] = sha256_file(self._local(p))
        return found, refused

    def make_dirs(self, dirs):
        """Create these directories on the drive (parents first)."""
        for d in sorted(dirs, key=len):
            self._local(d).mkdir(exist_ok=True)

    def write(self, path, local):
        """Copy one file onto the drive, replacing the old one only once complete."""
        data = Path(local).read_bytes()
        self._replace(path, data)
        self.sent += len(data)

    def _replace(self, path, data):
        dest = self._local(path)
        tmp = self._local(path + ".part")
        # A .part left by an earlier deploy, or planted: removed, never opened (it may be a symlink).
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with open(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)

    def remove(self, paths):
        """Delete files an earlier deploy put on the drive."""
        _refuse_untrusted(paths)
        for p in paths:
            try:
                self._local(p).unlink()
            except FileNotFoundError:
                pass

    def clear(self, paths):
        """Remove these state files if there; True when one was."""
        n = 0
        for p in paths:
            try:
                self._local(p).unlink()
                n += 1
            except FileNotFoundError:
                pass
        return n > 0

    def update_manifest(self, entries, removed):
        """Merge entries into the trusted manifest, drop removed paths, write it whole."""
        if not entries and not removed and not self.manifest_notes:
            return  # a manifest that held untrusted entries is rewritten without them
        files = self.read_manifest()[0]
        files.update(entries)
        for p in removed:
            files.pop(p, None)
        data = json.dumps({"version": MANIFEST_VERSION, "files": files}).encode()
        self._replace(MANIFEST, data)
        self.sent += len(data)

    def soft_reset(self, timeout=10):
        """Nothing to do: CircuitPython reloads code.py when files on its drive change."""

    def close(self):
        """Flush the drive's writes to the device."""
        os.sync()


# What an ESP32's ROM prints when IO0 was low at reset: it waits for esptool, not MicroPython.
ROM_DOWNLOAD_MODE = b"waiting for download"


def no_repl_reason(url, baud, heard, error=None):
    """One line on why no raw REPL answered at url, from the bytes the board sent meanwhile."""
    where = f"no MicroPython raw REPL at {url} at {baud} baud"
    if ROM_DOWNLOAD_MODE in heard:
        return (f"{where}: the board sits in its ROM bootloader (BOOT held at reset, or esptool"
                " left it there): press RESET (EN) alone, or unplug and plug it in")
    if heard and garbled(heard):
        return (f"{where}: the board answers, but in garbage ({len(heard)} bytes): the port's speed"
                " does not match the board's console; MicroPython's REPL runs at 115200 on a USB-UART"
                " board (-b sets the speed)")
    said = heard.decode("utf-8", "replace").strip().splitlines()
    why = f"it said: {said[-1][:80]}" if said else (_one_line(error) if error else "nothing answered")
    return (f"{where} ({why}); is the board flashed with MicroPython or CircuitPython, and not stuck"
            " in a program that ignores Ctrl-C?")


def _heard_bytes(printed):
    # mpremote prints the bytes as a Python bytes literal, one per failed wait.
    heard = b""
    for line in printed.splitlines():
        try:
            value = ast.literal_eval(line.strip())
        except (ValueError, SyntaxError):
            continue
        if isinstance(value, bytes):
            heard += value
    return heard


def _board_list(paths):
    # JSON, decoded on the board: a path is data there, whatever characters it holds.
    return "json.loads(%r)" % json.dumps(list(paths))


def _refuse_untrusted(paths):
    # deploy removes only manifest paths it checked; anything else here is a bug, not a file to lose.
    for p in paths:
        why = untrusted_reason(p)
        if why:
            raise DeployError(f"refusing to remove {p!r} ({why}): the manifest is not trusted")


def _one_line(e):
    text = str(e.args[-1] if getattr(e, "args", None) else e).strip()
    return text.splitlines()[-1] if text else type(e).__name__
