# A deployment of the update agent (azure_edge/adu.py): the manifest checked, the files fetched
# from the gateway's Connected Cache a chunk per turn of the client's loop, then each step's
# handler (edgekit/app:1 into a slot, edgekit/trust:1 beside the bundle's root). Loaded only
# for a deployment, held by Client.adu while it runs.
import json
import os

from azure_edge import log, unload
from azure_edge.adu import (APP, APPLY, BUSY, E_FILES, E_HANDLER, E_INSTALL, FAILURE, FIRMWARE,
                            IDLE, SUCCESS, TRUST, _exists, _fail, _result, _rmtree, agent_report,
                            kick, load, save)

_TRIES = 5                # a file's download attempts (each resumes) before the step fails
_SLICE_MS = 100           # download time per turn of the client's loop: the link keeps its turn


def start(c, st, svc, m, wid, resume, early=None):
    """Start the deployment whose manifest `m` adu_verify.deployment checked (or refused: a
    tuple (code, extended, message)): handlers and file URLs checked, its Job in Client.adu; the
    status for the service's acknowledgement (200, or 406 refused). `early`: adu_fetch.early's
    (file id, socket), handed to the Job (the caller closes it when no Job takes it)."""
    d = c.du["d"]
    # (A deployment during a firmware image's trial never gets here: adu._queue refuses it.)
    if not resume:
        _rmtree(d + "/dl")  # another deployment's leftovers
    st["wf"] = wid
    st["act"] = APPLY
    if isinstance(m, tuple):
        return _refuse(c, st, m)
    try:
        steps = m["instructions"]["steps"]
        files = m.get("files") or {}
        urls = svc.get("fileUrls") or {}
        for s in steps:
            if s.get("handler") not in (APP, TRUST, FIRMWARE):
                return _refuse(c, st, (FAILURE, E_HANDLER, "no handler %r on this device"
                                       % str(s.get("handler"))[:40]))
            for fid in s.get("files") or ():
                if fid not in files or fid not in urls:
                    return _refuse(c, st, (FAILURE, E_FILES, "file %s has no URL" % fid[:20]))
        if any(s["handler"] == FIRMWARE for s in steps):
            from azure_edge import adu_ota  # a firmware image: its own job (azure_edge/adu_ota.py)
            why = adu_ota.check(m, files)
            if why:
                return _refuse(c, st, why)
    except (KeyError, TypeError, AttributeError):
        return _refuse(c, st, (FAILURE, E_FILES, "malformed update manifest"))
    st["uid"] = json.dumps(m["updateId"])
    if not resume:
        st["phase"] = "download"
        st["res"] = None
    st["state"] = BUSY
    save(d, st)
    unload("slots")  # (loaded by _rmtree and save: not needed until the install)
    log("deployment %s: update %s" % (wid[:40], st["uid"]))
    if hasattr(c.adu, "fetch"):
        c.adu.close()  # the deployment this one replaces
    if steps[0]["handler"] == FIRMWARE:
        c.adu = adu_ota.Flash(c, m, urls)
        return 200
    c.adu = Job(c, m, urls, early)
    return 200


def _refuse(c, st, why):
    _fail(c, st, why[0], why[1], why[2])
    return 406  # az_iot_adu_client_request_decision: AZ_IOT_ADU_CLIENT_REQUEST_DECISION_REJECT


class Job:
    """A deployment under way, driven from the client's loop (Client.step calls step(c)): the
    files one chunk at a time, then each step's handler. Kept in Client.adu until done."""

    def __init__(self, c, m, urls, early=None):
        self.m = m
        self.urls = urls
        self.early = early   # (file id, socket): that file's GET already sent
        self.steps = m["instructions"]["steps"]
        self.ids = []
        for s in self.steps:
            for fid in s.get("files") or ():
                if fid not in self.ids:
                    self.ids.append(fid)
        self.i = 0           # the file being fetched
        self.fetch = None
        self.tries = 0
        self.wait = 0        # ticks before the next attempt after a dropped link
        from adafruit_ticks import ticks_add, ticks_ms
        # The whole download's bound (bundle "adu": "download_minutes"); reset with the board.
        self.until = ticks_add(ticks_ms(), int(c.du.get("download_minutes", 60) * 60000))

    def step(self, c):
        try:
            self._step(c)
        except Exception as e:  # noqa: BLE001 (the device loop must go on: the step fails)
            self.close()
            c.adu = None
            try:
                st = load(c.du["d"])
                _fail(c, st, FAILURE, E_INSTALL, "%s: %s" % (type(e).__name__, e), len(self.steps))
                self._end(c, st)
            except Exception as e:  # noqa: BLE001 (no heap even for that: said, and left)
                log("update agent: %s: %s" % (type(e).__name__, e))

    def _step(self, c):
        kick(c)  # a cancel, or the twin again after a reconnect
        if c.adu is not self:
            return
        d = c.du["d"]
        st = load(d)
        if st.get("phase") == "download":
            if not self._download(c, d, st):
                return
            # Not saved: after a reset "download" finds the files whole and checked (dl/<id>)
            # and goes on to the install all the same, one state file write sooner.
            st["phase"] = "install"
            # The download's code gives way to the install's: never both in the heap.
            unload("adu_fetch", "adu_hash")
            import gc
            gc.collect()
        if st.get("phase") == "install":
            self._install(c, d, st)

    def _download(self, c, d, st):
        from adafruit_ticks import ticks_add, ticks_diff, ticks_ms
        from azure_edge import adu_fetch, adu_hash  # not adu_verify: the signature is checked
        while self.i < len(self.ids):
            fid = self.ids[self.i]
            dest = d + "/dl/" + fid
            if _exists(dest):
                self.i += 1  # fetched and checked before a reset
                continue
            if ticks_diff(ticks_ms(), self.until) >= 0:
                self.close()
                _fail(c, st, FAILURE, adu_fetch.E_TIME, "download took over its %s minutes"
                      % c.du.get("download_minutes", 60), len(self.steps))
                return self._end(c, st)
            if self.wait and ticks_diff(ticks_ms(), self.wait) < 0:
                return False
            entry = self.m["files"][fid]
            try:
                if self.fetch is None:
                    from azure_edge import slots
                    slots._mkdirs(d + "/dl")
                    unpack = self._tar(fid) and adu_fetch.Unpack(self._slot(d, st, dest, slots))
                    slots = None
                    unload("slots")
                    url = self.urls[fid]
                    gw = c.du.get("cache") or c.cs.connect_host
                    sock = None
                    if self.early and self.early[0] == fid:
                        sock, self.early = self.early[1], None
                    self.fetch = adu_fetch.Fetch(adu_fetch.mcc_url(url, gw), dest,
                                                 entry["sizeInBytes"],
                                                 lambda: adu_hash.Hasher(entry), sock,
                                                 unpack or None)
                if not self.fetch.step(ticks_add(ticks_ms(), _SLICE_MS)):
                    return False
                self.fetch.h.finish()
            except adu_hash.Refused as e:
                self._drop(dest)
                _fail(c, st, e.code, e.extended, e.msg, len(self.steps))
                return self._end(c, st)
            except adu_fetch.Failed as e:
                ext, msg, retry = e.args
                if not retry or self.tries >= _TRIES:
                    self.close()
                    _fail(c, st, FAILURE, ext, msg, len(self.steps))
                    return self._end(c, st)
                self._retry(msg)
                return False
            except OSError as e:
                if self.tries >= _TRIES:
                    self.close()
                    _fail(c, st, FAILURE, adu_fetch.E_LINK, "download failed: %s" % e, len(self.steps))
                    return self._end(c, st)
                self._retry(str(e))
                return False
            os.rename(dest + ".part", dest)  # whole and checked
            log("downloaded %s (%d bytes)" % (entry.get("fileName"), entry["sizeInBytes"]))
            self.fetch = None
            self.tries = 0
            self.i += 1
        return True

    def _retry(self, why):
        from adafruit_ticks import ticks_add, ticks_ms
        self.close()
        self.tries += 1
        delay = 1000 << self.tries  # 2, 4, 8, 16, 32 s; each attempt resumes with Range
        self.wait = ticks_add(ticks_ms(), delay)
        log("download interrupted (%s); resuming in %d s" % (why, delay // 1000))

    def _drop(self, dest):
        unpack = self.fetch and self.fetch.unpack
        self.close()
        try:
            os.remove(dest + ".part")  # it failed its check: never resumed from
        except OSError:
            pass
        if unpack:  # what it unpacked goes too
            _rmtree(unpack.s)
            try:
                os.rmdir(unpack.s.rsplit("/", 1)[0])  # the slots' folder, when now empty
            except OSError:
                pass

    def _slot(self, d, st, dest, slots):
        # The folder a .tar streams into: the spare slot when the download starts from byte 0
        # (emptied then), kept in the agent's state ("to") for a resumed download and for the
        # install, since a reset in between may change which slot spare() names (a trial rolled
        # back).
        to = st.get("to")
        if not to or not _exists(dest + ".part"):
            to = st["to"] = slots.spare(d)
            slots._rmtree(d + "/slots/" + to)
            slots._rm(dest + ".part")
            save(d, st)
        slots._mkdirs(d + "/slots/" + to)
        return d + "/slots/" + to

    def _tar(self, fid):
        # Whether file `fid` is unpacked into the spare slot as it streams (adu_fetch.Unpack):
        # the one file of an application step, a .tar. Decided from the manifest alone, so the
        # same after a reset (the install then finds it unpacked).
        for s in self.steps:
            if s.get("handler") == APP and s.get("files") == [fid]:
                return self.m["files"][fid].get("fileName", "").endswith(".tar")
        return False

    def _install(self, c, d, st):
        from azure_edge import slots
        files = self.m["files"]
        app = None
        try:
            for s in self.steps:  # trust steps first: they need no reboot
                paths = [(d + "/dl/" + f, files[f].get("fileName", f)) for f in s.get("files") or ()]
                if s["handler"] == TRUST:
                    from azure_edge import trust  # only for a trust step
                    trust.add(d, [p for p, _ in paths])
                    trust = None
                else:
                    app = paths
                    ids = s.get("files") or ()
            if app is not None:
                unpacked = len(ids) == 1 and self._tar(ids[0]) and st["to"]  # as it came
                slot = slots.install(d, [] if unpacked else app, st["uid"], unpacked)
        except (OSError, ValueError) as e:
            _fail(c, st, FAILURE, E_INSTALL, "install failed: %s" % e, len(self.steps))
            return self._end(c, st)
        if app is None:
            _rmtree(d + "/dl")
            _result(st, SUCCESS, 0, "", len(self.steps))
            st["phase"] = ""
            st["state"] = IDLE
            st["installed"] = st["uid"]
            st["slot"] = 0  # a trust update: the application is untouched
            save(d, st)
            log("update %s installed" % st["uid"])
            return self._end(c, st)
        st["phase"] = "trial"
        save(d, st)  # before the switch: a cut between leaves "trial" with no trial: failed
        slots.switch(d, slot, c.du.get("boots", slots.K_BOOTS),
                     c.du.get("minutes", slots.T_SECONDS // 60) * 60)
        log("update installed in slot %s: rebooting into it on trial" % slot)
        c.adu = None
        c.reboot_requested = True

    def _end(self, c, st):
        c.adu = None
        c.report(agent_report(c, st))
        unload("adu_fetch", "adu_hash", "slots", "trust")
        return False

    def close(self):
        if self.early:
            self.early[1].close()
            self.early = None
        if self.fetch is not None:
            self.fetch.close()
            self.fetch = None
