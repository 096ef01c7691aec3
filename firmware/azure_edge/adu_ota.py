# The handler edgekit/firmware:1 of the update agent (azure_edge/adu.py): a MicroPython firmware
# image written into the board's next OTA slot through esp32.Partition, for boards flashed with
# MicroPython's OTA variant (ota_0, ota_1, otadata). Loaded only for such a deployment and for
# the trial boot after it (docs/updates.md).
#
# As ESP-IDF's OTA works (components/app_update/esp_ota_ops.c) and MicroPython exposes it
# (ports/esp32/esp32_partition.c): the image streams into
# Partition(RUNNING).get_next_update(), each 4096-byte block erased as the write enters it and
# programmed a chunk at a time (no block-sized buffer in the heap), hashed as it streams;
# set_boot() only once the whole image matched its size and SHA-256 (set_boot verifies the
# image's own checksum too); then a reset. The bootloader boots the new image once, on trial
# (CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE, set by MicroPython's esp32 builds): unless
# Partition.mark_app_valid_cancel_rollback() is called in that boot, the next reset boots the
# old image again. It is called after the first good connect, as the app slot's trial is kept.
from azure_edge import log, unload
from azure_edge.adu import (E_INSTALL, FAILED, FAILURE, FIRMWARE, IDLE, SUCCESS, _fail, _result, agent_report,
                            load, save)

# Extended result codes (edgekit's own facility, 0x7E0004..). FIRMWARE: adu.py.
E_NO_OTA = 0x7E000401     # the board runs MicroPython without OTA slots
E_TOO_BIG = 0x7E000402    # the image is larger than the slot
E_BOOT = 0x7E000403       # set_boot refused the image (ESP_ERR_OTA_VALIDATE_FAILED)
E_ROLLED = 0x7E000404     # the bootloader rolled the image back: not kept in its first boot
E_STEPS = 0x7E000405      # a firmware deployment is one step with one file
_BLOCK = 4096
_TRIES = 5


def next_slot():
    """The OTA slot an image goes to, or None when the board has none (a plain image, CPython)."""
    try:
        import esp32
        return esp32.Partition(esp32.Partition.RUNNING).get_next_update()
    except (ImportError, AttributeError, OSError):
        return None


def running():
    try:
        import esp32
        return esp32.Partition(esp32.Partition.RUNNING).info()[4]
    except (ImportError, AttributeError, OSError):
        return None


def check(m, files):
    """Why the deployment's firmware step cannot be taken on this board, as a refusal (code,
    extended, message), or None."""
    steps = m["instructions"]["steps"]
    if len(steps) != 1 or len(steps[0].get("files") or ()) != 1:
        return (FAILURE, E_STEPS, "a firmware update is one step with one image")
    part = next_slot()
    if part is None:
        return (FAILURE, E_NO_OTA, "no OTA partitions: flash MicroPython's OTA variant for firmware updates")
    size = files[steps[0]["files"][0]]["sizeInBytes"]
    room = part.info()[3]
    if not isinstance(size, int) or size > room:
        return (FAILURE, E_TOO_BIG, "firmware image of %s bytes does not fit %s (%d bytes)"
                % (size, part.info()[4], room))
    return None


class _Sink:
    # Where the download writes: the slot, each block erased as the write enters it.
    def __init__(self, part, at):
        self.p = part
        self.at = at

    def write(self, chunk):
        done = 0
        while done < len(chunk):
            off = self.at % _BLOCK
            if not off:
                self.p.ioctl(6, self.at // _BLOCK)  # MP_BLOCKDEV_IOCTL_BLOCK_ERASE
            k = min(len(chunk) - done, _BLOCK - off)
            self.p.writeblocks(self.at // _BLOCK, chunk[done:done + k], off)
            self.at += k
            done += k

    def close(self):
        pass


def _fetch_class():
    from azure_edge import adu_fetch

    class Fetch(adu_fetch.Fetch):
        # adu_fetch.Fetch into the slot instead of a file. What this boot wrote is read back
        # and hashed again after a dropped link (`keep` bytes); after a reset nothing is kept.
        def __init__(self, url, size, hasher_of, part, keep):
            adu_fetch.Fetch.__init__(self, url, "", size, hasher_of)
            self.part = part
            self.keep = keep

        def _rehash(self):
            self.h = self.hasher_of()
            self.have = 0
            while self.have < self.keep:
                k = min(len(self.buf), self.keep - self.have, _BLOCK - self.have % _BLOCK)
                mv = memoryview(self.buf)[:k]
                self.part.readblocks(self.have // _BLOCK, mv, self.have % _BLOCK)
                self.h.update(mv)
                self.have += k

        def _restart(self):
            self.close()
            self.keep = 0
            self.h = self.hasher_of()
            self.have = 0

        def _sink(self):
            return _Sink(self.part, self.have)

    return Fetch


class Flash:
    """A firmware deployment under way (Client.adu): the image into the next slot a chunk per
    turn of the client's loop, then set_boot and a reset. `fetch` and close() as adu_job.Job's,
    which adu.py's cancel looks for."""

    def __init__(self, c, m, urls):
        from adafruit_ticks import ticks_add, ticks_ms
        step = m["instructions"]["steps"][0]
        self.fid = step["files"][0]
        self.entry = m["files"][self.fid]
        self.url = urls[self.fid]
        self.part = next_slot()
        self.fetch = None
        self.keep = 0
        self.tries = 0
        self.wait = 0
        self.until = ticks_add(ticks_ms(), int(c.du.get("download_minutes", 60) * 60000))

    def step(self, c):
        try:
            self._step(c)
        except Exception as e:  # noqa: BLE001 (the device loop goes on: the step fails)
            self.close()
            c.adu = None
            st = load(c.du["d"])
            self._failed(c, st, FAILURE, E_INSTALL, "install failed: %s: %s" % (type(e).__name__, e))

    def _step(self, c):
        from adafruit_ticks import ticks_add, ticks_diff, ticks_ms
        from azure_edge import adu_fetch, adu_hash
        from azure_edge.adu import kick
        kick(c)  # a cancel, or the twin again after a reconnect
        if c.adu is not self:
            return
        d = c.du["d"]
        if ticks_diff(ticks_ms(), self.until) >= 0:
            self.close()
            return self._failed(c, load(d), FAILURE, adu_fetch.E_TIME, "download took over its %s minutes"
                                % c.du.get("download_minutes", 60))
        if self.wait and ticks_diff(ticks_ms(), self.wait) < 0:
            return
        entry = self.entry
        try:
            if self.fetch is None:
                gw = c.du.get("cache") or c.cs.connect_host
                self.fetch = _fetch_class()(adu_fetch.mcc_url(self.url, gw), entry["sizeInBytes"],
                                            lambda: adu_hash.Hasher(entry), self.part, self.keep)
            if not self.fetch.step(ticks_add(ticks_ms(), 100)):
                return
            self.fetch.h.finish()  # size and SHA-256, before anything can boot it
        except adu_hash.Refused as e:
            self.close()
            return self._failed(c, load(d), e.code, e.extended, e.msg)
        except adu_fetch.Failed as e:
            ext, msg, retry = e.args
            if not retry or self.tries >= _TRIES:
                self.close()
                return self._failed(c, load(d), FAILURE, ext, msg)
            return self._retry(msg)
        except OSError as e:
            if self.tries >= _TRIES:
                self.close()
                return self._failed(c, load(d), FAILURE, adu_fetch.E_LINK, "download failed: %s" % e)
            return self._retry(str(e))
        self.close()
        label = self.part.info()[4]
        log("firmware image written to %s (%d bytes)" % (label, entry["sizeInBytes"]))
        st = load(d)
        # Recorded before the switch: a cut between the two boots the old image, which then
        # reports the deployment failed (the new one did not run), never half a state.
        st["phase"] = "trial"
        st["fw"] = label
        save(d, st)
        try:
            self.part.set_boot()
        except OSError as e:
            return self._failed(c, st, FAILURE, E_BOOT, "the bootloader refuses the image: %s" % (e,))
        log("rebooting into %s on trial" % label)
        c.adu = None
        c.reboot_requested = True

    def _retry(self, why):
        from adafruit_ticks import ticks_add, ticks_ms
        if self.fetch is not None:
            self.keep = self.fetch.have  # this boot's bytes: hashed again, then resumed
        self.close()
        self.tries += 1
        delay = 1000 << self.tries
        self.wait = ticks_add(ticks_ms(), delay)
        log("download interrupted (%s); resuming in %d s" % (why, delay // 1000))

    def _failed(self, c, st, code, ext, msg):
        st.pop("fw", None)
        _fail(c, st, code, ext, msg)
        c.adu = None
        c.report(agent_report(c, st))
        unload("adu_fetch", "adu_hash", "adu_ota")

    def close(self):
        if self.fetch is not None:
            self.fetch.close()
            self.fetch = None


def boot(c, st):
    """At boot with a firmware trial recorded (adu_boot.boot): the new image runs, watched by a
    Trial; or the bootloader booted the old one (rolled back, or cut before the switch): the
    deployment failed."""
    d = c.du["d"]
    run = running()
    if run == st.get("fw"):
        c.adu = Trial(d, c.du.get("minutes", 10))
        log("firmware image in %s on trial" % run)
        return
    _result(st, FAILURE, E_ROLLED, "firmware image in %s rolled back: %s runs" % (st.get("fw"), run))
    st["state"] = FAILED
    st["phase"] = ""
    st.pop("fw", None)
    save(d, st)
    log("update %s rolled back by the bootloader (%s runs)" % (st.get("uid"), run))


class Trial:
    """The new image's first boot, from the client's loop (Client.adu): kept with
    mark_app_valid_cancel_rollback() once connected with its twin fetched and the reports sent;
    reset (so the bootloader rolls it back) when not connected within `minutes`."""

    def __init__(self, d, minutes):
        from adafruit_ticks import ticks_add, ticks_ms
        self.d = d
        self.until = ticks_add(ticks_ms(), int(minutes * 60000))

    def step(self, c):
        try:
            self._step(c)
        except Exception as e:  # noqa: BLE001 (no heap for the report, a flash error: watch on)
            c.du.pop("twin", None)
            log("firmware trial: %s: %s" % (type(e).__name__, e))

    def _step(self, c):
        from adafruit_ticks import ticks_diff, ticks_ms
        if c.du.get("twin"):
            from azure_edge import run_and_unload
            run_and_unload("adu", "kick", c)  # the agent's report at connect
            return
        if c.connected and c._twin_rid is None and not c._replies and c.reconnects:
            import esp32
            esp32.Partition.mark_app_valid_cancel_rollback()
            c.adu = None
            st = load(self.d)
            if st.get("phase") == "trial":
                _result(st, SUCCESS, 0, "")
                st["state"] = IDLE
                st["phase"] = ""
                st["installed"] = st.get("uid")
                st["slot"] = 0  # the application is untouched: the id names the firmware
                st.pop("fw", None)
                save(self.d, st)
            log("firmware image connected and reported: kept")
            c.report(agent_report(c, st))
            unload("adu_ota")
        elif not c.connected and ticks_diff(ticks_ms(), self.until) >= 0:
            log("firmware image not connected in time: resetting into the old one")
            c.adu = None
            c.reboot_requested = True
