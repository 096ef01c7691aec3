"""What the gateway keeps under DATA so a restart loses nothing.

  telemetry.jsonl  one JSON object per device-to-cloud message, one line each, on disk
                   (fsync) before the message is acknowledged; a torn last line (disk full,
                   a crash mid-write) is cut back to the last whole record on open and after
                   a failed write, so the next record never lands glued onto it
  twins/<id>.json  one identity's twin {"desired": {...}, "reported": {...}} ("dev" or "dev/mod",
                   %-quoted), rewritten atomically in a worker thread, so one device's twin write
                   never rewrites (or waits on) another's; twin_limits keeps each under 64 KB.
                   An older single twins.json is split into these on open.
  c2d.json         {"dev": [queued cloud-to-device messages]}, until the device acknowledges them
"""
import asyncio
import datetime
import json
import os
import time
import urllib.parse

from edgekit.certs.pem import write_atomic
from edgekit.gateway.c2d import expired

TELEMETRY = "telemetry.jsonl"
TWINS = "twins.json"  # the older single file, split into TWIN_DIR on open
TWIN_DIR = "twins"
C2D = "c2d.json"


class StoreError(ValueError):
    """A store file that cannot be read; the message names it."""


def now_iso():
    """Current UTC time as ISO 8601 with milliseconds and a Z."""
    t = datetime.datetime.now(datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def read_json_object(path):
    """The JSON object in path, or {} when it is missing, unreadable or not an object: for state
    the gateway can rebuild (owners, sessions, the upstream's counters)."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _read_json(path, default):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as e:
        raise StoreError(f"{path} is unreadable ({e}); move it away to start afresh")


def read_telemetry(data_dir):
    """Every stored telemetry record, oldest first (a line still being written is skipped)."""
    return list(follow_telemetry(data_dir, follow=False))


def follow_telemetry(data_dir, follow=False, poll=0.2, stop=None):
    """Yield stored telemetry records; with follow, keep waiting for new ones (until stop() is true)."""
    path = os.path.join(os.fspath(data_dir), TELEMETRY)
    pos = 0
    while True:
        # Cut back after a failed write: what follows is written from the cut on.
        pos = min(pos, _size(path))
        try:
            with open(path, "rb") as f:
                f.seek(pos)
                for line in f:
                    if not line.endswith(b"\n"):
                        break  # being written: read it whole next time
                    pos += len(line)
                    try:
                        yield json.loads(line)
                    except ValueError:
                        continue
        except FileNotFoundError:
            pass
        if not follow or (stop is not None and stop()):
            return
        time.sleep(poll)


def _size(path):
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def whole_records_end(fd):
    """The offset just past the last newline of an open file (0 when it has none)."""
    end = os.lseek(fd, 0, os.SEEK_END)
    pos = end
    while pos > 0:
        step = min(pos, 64 * 1024)
        chunk = os.pread(fd, step, pos - step)
        i = chunk.rfind(b"\n")
        if i >= 0:
            return pos - step + i + 1
        pos -= step
    return 0


def new_twin():
    """A twin as IoT Hub creates it: empty desired and reported, both at $version 1."""
    return {"desired": {"$version": 1}, "reported": {"$version": 1}}


def device_view(twin):
    """What a device's twin GET returns: desired and reported only; tags are the service side's own."""
    return {"desired": twin["desired"], "reported": twin["reported"]}


def merge_patch(target, patch):
    """Apply a twin patch in place: null deletes a key, objects merge, anything else replaces."""
    for k, v in patch.items():
        if k.startswith("$"):
            continue
        if v is None:
            target.pop(k, None)
        elif isinstance(v, dict):
            sub = target.get(k)
            if not isinstance(sub, dict):
                sub = target[k] = {}
            merge_patch(sub, v)
        else:
            target[k] = v


def _twin_file(client_id):
    # Device and module ids may hold '%', '.', ':' and more, never '/' between device and module:
    # quoting everything but letters, digits and "-_." keeps one file per id, reversibly.
    return urllib.parse.quote(client_id, safe="") + ".json"


def _read_twins(folder):
    twins = {}
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return twins
    for name in names:
        if name.endswith(".json") and not name.startswith("."):
            twins[urllib.parse.unquote(name[:-5])] = _read_json(os.path.join(folder, name), new_twin())
    return twins


def read_twin(data_dir, client_id):
    """An identity's stored twin, read from DATA (None when it has none)."""
    return _read_json(os.path.join(os.fspath(data_dir), TWIN_DIR, _twin_file(client_id)), None)


class Store:
    """The gateway's persistent state; one Store per running `serve` (the only writer)."""

    def __init__(self, data_dir):
        self.data_dir = os.fspath(data_dir)
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        self._twin_dir = os.path.join(self.data_dir, TWIN_DIR)
        self.twins = _read_twins(self._twin_dir)
        self._twin_locks = {}
        self._split_old_twins()
        self.c2d = _read_json(os.path.join(self.data_dir, C2D), {})
        self._telemetry_path = os.path.join(self.data_dir, TELEMETRY)
        self._telemetry = os.open(self._telemetry_path, os.O_RDWR | os.O_CREAT, 0o600)
        self._end = self._durable = self._cut_torn_tail()
        self._syncing = None
        # A failed fsync discards every record it was to cover. Records are written in a
        # generation; _lost_from[g] is the durable offset when generation g ended in such a failure:
        # a record of g ending past it is gone, even if later records were written over its place.
        self._generation = 0
        self._lost_from = {}
        self.fdatasync = os.fdatasync  # the one call that makes records durable (tests watch it here)
        self.on_c2d_expired = None  # called (device id, mid) for each expired message dropped
        self.syncs = 0  # fsyncs done by add_telemetry_async (group commits)

    def _cut_torn_tail(self):
        # A line without its newline was never acknowledged: drop it so the next record starts clean.
        end = whole_records_end(self._telemetry)
        if os.lseek(self._telemetry, 0, os.SEEK_END) != end:
            os.ftruncate(self._telemetry, end)
            os.fsync(self._telemetry)
        return end

    def close(self):
        """Close the telemetry file (every record is already on disk)."""
        if self._telemetry is not None:
            os.close(self._telemetry)
            self._telemetry = None

    def add_telemetry(self, record):
        """Append one telemetry record, on disk (fsync) when this returns; StoreError when it is not.

        One record per call and one fsync each: the caller acknowledges the message after
        this returns, so what was acknowledged can always be read back. After a failed
        write the file is cut back to the last whole record, so a later record (once there
        is space again) is never glued onto a torn one.
        """
        end = self._append(record)
        try:
            self.fdatasync(self._telemetry)
        except OSError as e:
            self._discard_unsynced()
            raise self._error(e)
        self._durable = end

    async def add_telemetry_async(self, record):
        """add_telemetry for the event loop, with group commit: on disk when this returns.

        The record is written at once; the fsync runs in a worker thread, and one fsync covers
        every record written before it started, so concurrent devices share it and the loop
        keeps serving while the disk works. StoreError when the record is not on disk (a
        failed fsync cuts back every record it was to cover). Use one of the two per Store.
        """
        await self.commit_telemetry(self.write_telemetry(record))

    def write_telemetry(self, record):
        """Append one record now, not yet on disk; returns the token commit_telemetry takes.

        For a caller that writes several records (one link's read-ahead) and then commits them
        together: the first commit waits for one fsync that covers them all, the others return at
        once. Nothing written this way may be acknowledged before its commit returns.
        StoreError when the write fails (the torn part is cut back).
        """
        return self._generation, self._append(record)

    async def commit_telemetry(self, written):
        """Return once the record written_telemetry gave the token `written` for is on disk.

        The group commit of add_telemetry_async: an fsync in a worker thread covers every record
        written before it started, shared by every waiter. StoreError when it fails: the records
        it was to cover are cut back, and none of them counts.
        """
        generation, end = written
        while True:
            if generation != self._generation and end > self._lost_from[generation]:
                # Discarded by a failed fsync while this caller was not waiting on it.
                raise StoreError(f"telemetry not stored in {self._telemetry_path} (an fsync failed); "
                                 "free some space, then the device can send it again")
            if self._durable >= end:
                return
            if self._syncing is None:
                self._syncing = asyncio.ensure_future(self._sync())
            await asyncio.shield(self._syncing)

    async def _sync(self):
        target = self._end
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.fdatasync, self._telemetry)
        except OSError as e:
            self._discard_unsynced()  # its waiters all fail: none of their records counts
            raise self._error(e)
        finally:
            self._syncing = None
        self.syncs += 1
        self._durable = max(self._durable, target)

    def _append(self, record):
        # One whole line at self._end; returns the offset past it.
        line = json.dumps(record, ensure_ascii=False).encode() + b"\n"
        try:
            view = memoryview(line)
            while view:
                n = os.pwrite(self._telemetry, view, self._end + len(line) - len(view))
                view = view[n:]
        except OSError as e:
            self._cut_back(self._end)
            raise self._error(e)
        self._end += len(line)
        return self._end

    def _discard_unsynced(self):
        # After a failed fsync nothing past the durable offset counts.
        self._lost_from[self._generation] = self._durable
        self._generation += 1
        self._cut_back(self._durable)

    def _cut_back(self, offset):
        # After a failure nothing past `offset` counts (a torn line, or records not on disk).
        self._end = offset
        try:
            os.ftruncate(self._telemetry, self._end)
        except OSError:
            # Shrinking needs no space, so this hardly happens; if it does, the next record is
            # written at self._end over the leftovers, and a torn prefix of one line holds no
            # newline, so readers never take it for a record.
            pass

    def _error(self, e):
        return StoreError(f"telemetry not stored in {self._telemetry_path} ({e.strerror or e}); "
                          "free some space, then the device can send it again")

    def twin(self, client_id):
        """The twin of an identity, created on first use."""
        t = self.twins.get(client_id)
        if t is None:
            os.makedirs(self._twin_dir, mode=0o700, exist_ok=True)
            t = self.twins[client_id] = new_twin()
        return t

    async def save_twin(self, client_id):
        """Write one identity's twin, atomically, in a worker thread; writes of one twin stay in order."""
        lock = self._twin_locks.setdefault(client_id, asyncio.Lock())
        async with lock:
            data = json.dumps(self.twin(client_id), sort_keys=True).encode()  # capped: a few KB at most
            await asyncio.get_running_loop().run_in_executor(None, write_atomic, self._twin_path(client_id), data)

    def forget_twin(self, client_id):
        """Delete an identity's twin (its identity was removed)."""
        self.twins.pop(client_id, None)
        try:
            os.unlink(self._twin_path(client_id))
        except FileNotFoundError:
            pass

    def _twin_path(self, client_id):
        return os.path.join(self._twin_dir, _twin_file(client_id))

    def _split_old_twins(self):
        old = os.path.join(self.data_dir, TWINS)
        doc = _read_json(old, None)
        if doc is None:
            return
        os.makedirs(self._twin_dir, mode=0o700, exist_ok=True)
        for client_id, twin in doc.items():
            if client_id not in self.twins and isinstance(twin, dict):
                self.twins[client_id] = twin
                write_atomic(self._twin_path(client_id), json.dumps(twin, sort_keys=True).encode())
        os.unlink(old)

    def queue_c2d(self, device_id, message):
        """Queue a C2D message for a device until it is acknowledged."""
        self.c2d.setdefault(device_id, []).append(message)
        self._save_c2d()

    def pending_c2d(self, device_id):
        """The queued C2D messages of a device, oldest first; expired ones ($.exp) are dropped, as IoT Hub does."""
        msgs = self.c2d.get(device_id, [])
        gone = [m for m in msgs if expired(m)]
        live = [m for m in msgs if m not in gone]
        if gone:
            for m in gone:
                if self.on_c2d_expired is not None:
                    self.on_c2d_expired(device_id, m["mid"])
            if live:
                self.c2d[device_id] = live
            else:
                self.c2d.pop(device_id, None)
            self._save_c2d()
        return list(live)

    def forget_c2d(self, device_id):
        """Drop a removed device's queue."""
        if self.c2d.pop(device_id, None) is not None:
            self._save_c2d()

    def ack_c2d(self, device_id, mid):
        """Drop a delivered C2D message."""
        msgs = [m for m in self.c2d.get(device_id, []) if m["mid"] != mid]
        if msgs:
            self.c2d[device_id] = msgs
        else:
            self.c2d.pop(device_id, None)
        self._save_c2d()

    def _save_c2d(self):
        write_atomic(os.path.join(self.data_dir, C2D), json.dumps(self.c2d, indent=1).encode())
