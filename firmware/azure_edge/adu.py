# The Device Update for IoT Hub (ADU) agent: the twin component `deviceUpdate`, the download
# from the gateway's Connected Cache and the handlers edgekit/app:1 and edgekit/trust:1
# (docs/updates.md). Loaded for a deployment that is new, retried, to resume or cancelled, and at
# a trial's boot (azure_edge/adu_boot.py answers the twin otherwise), and kept only while a trial
# or a trust probe runs (Client.adu holds the Trial or the Probe); unloaded after. A deployment
# is only taken here: written to flash, then applied in a boot of its own
# (azure_edge/adu_apply.py, which runs azure_edge/adu_job.py), with neither the MQTT client nor
# the application in the heap.
#
# The wire shapes follow Azure/azure-sdk-for-c sdk/src/azure/iot/az_iot_adu_client.c:
# az_iot_adu_client_get_agent_state_payload (the reported `agent`), _parse_service_properties
# (the desired `service`) and _get_service_properties_response (the acknowledgement), and
# MicrosoftDocs azure-docs articles/iot-hub-device-update/device-update-plug-and-play.md.
import json
import os

from azure_edge import VERSION, log, unload

# sdk/inc/azure/iot/az_iot_adu_client.h: AZ_IOT_ADU_CLIENT_AGENT_MODEL_ID, _AGENT_VERSION,
# _PROPERTIES_COMPONENT_NAME, _AGENT_DEFAULT_COMPATIBILITY_PROPERTIES.
MODEL_ID = "dtmi:azure:iot:deviceUpdateContractModel;2"
ADU_VER = "DU;agent/1.0.0"
COMPONENT = "deviceUpdate"
COMPAT = "manufacturer,model"
# az_iot_adu_client_agent_state and az_iot_adu_client_service_action (the same header).
IDLE, BUSY, FAILED = 0, 6, 255
APPLY, CANCEL = 3, 255
# Result codes: iot-hub-device-update adu_types/inc/aduc/types/adu_core.h (ADUC_Result_Failure
# 0, ADUC_Result_Apply_Success 700, ADUC_Result_Failure_Cancelled -1). Extended codes are
# edgekit's own (0x7E......): adu_fetch.E_*, slots.WHY, and these.
FAILURE, SUCCESS, CANCELLED = 0, 700, -1
E_HANDLER = 0x7E000302    # a step for a handler this agent does not have
E_FILES = 0x7E000303      # a file without a URL, or an unusable file
E_INSTALL = 0x7E000304    # the install itself failed (flash full, a bad archive)
E_HEAP = 0x7E000305       # not enough heap for the deployment (azure_edge.step)
E_READ_ONLY = 0x7E000306  # the data folder cannot be written (CIRCUITPY not remounted)
APP, TRUST = "edgekit/app:1", "edgekit/trust:1"
FIRMWARE = "edgekit/firmware:1"  # MicroPython's own image, into an OTA slot: azure_edge/adu_ota.py


def boot(c, st):
    """A boot with the deployment on trial (adu_boot.boot): the trial gets its watcher
    (Client.adu); a trial that was rolled back is recorded as the deployment's failure."""
    d = c.du["d"]
    if st.get("fw"):  # a firmware image's trial (adu_ota.py)
        from azure_edge import adu_ota
        adu_ota.boot(c, st)
        unload("adu_ota")  # its watcher keeps what it needs
        return
    from azure_edge import trial as watch  # (not slots: the client is built already)
    slot, trial = watch.running(d)
    why = watch.read(d).get("why")
    if trial:
        c.adu = watch.Trial(d)
    elif why:
        from azure_edge import slots
        _rmtree(d + "/dl")
        _result(st, FAILURE, slots.WHY.get(why, 0), "trial application rolled back: " + why)
        st["state"] = FAILED
        st["installed"] = slots.installed_id(d, slot) if slot else None
        st["slot"] = 1
        st["phase"] = ""  # decided: recorded once, not again at every boot
        save(d, st)
        log("update %s rolled back (%s)" % (st.get("uid"), why))
    elif slot:
        # Kept (boot.json runs it), cut before the agent's record of it (trial_done). Not a cut
        # between the install and the switch: the deployment's boot redoes those (adu_apply),
        # and never gets this far before.
        _rmtree(d + "/dl")
        _result(st, SUCCESS, 0, "")
        st["state"] = IDLE
        st["installed"] = st.get("uid")
        st["slot"] = 1
        st["phase"] = ""
        save(d, st)
    # else: `edgekit deploy` replaced it (boot.json removed): the factory's id is reported
    unload("trial", "slots")  # a Trial keeps what it needs


def trial_done(c):
    # From trial.Trial: the trial application connected and reported.
    d = c.du["d"]
    st = load(d)
    if st.get("phase") == "trial":
        _rmtree(d + "/dl")
        _result(st, SUCCESS, 0, "")
        st["state"] = IDLE
        st["installed"] = st.get("uid")
        st["slot"] = 1
        st["phase"] = ""  # done: later boots have no trial to look at (adu_boot.boot)
        save(d, st)
        log("update %s installed" % st.get("uid"))
    c.report(agent_report(c, st))


def load(d):
    for p in (d + "/adu.json", d + "/adu.json.new"):  # .new: cut between remove and rename (FAT)
        try:
            with open(p) as f:
                st = json.load(f)
            if isinstance(st, dict):
                return st
        except (OSError, ValueError):
            pass
    return {"state": IDLE}


def save(d, st, name="/adu.json"):
    # Replaced whole (write, rename), as slots.write does: a cut leaves the old or the new
    # (load and adu_apply.read fall back to the .new copy where a rename cannot replace).
    _mkdirs(d)
    with open(d + name + ".new", "w") as f:
        json.dump(st, f)
    try:
        os.rename(d + name + ".new", d + name)
    except OSError:
        os.remove(d + name)
        os.rename(d + name + ".new", d + name)


def _mkdirs(p):
    # slots._mkdirs, here too: the agent's records are written while the device runs, where
    # loading the slots' code for it would cost the heap a deployment needs.
    if not p or _exists(p):
        return
    i = p.rfind("/")
    if i > 0:
        _mkdirs(p[:i])
    try:
        os.mkdir(p)
    except OSError:
        pass


def installed_id(c, st):
    """installedUpdateId: the update that really runs, as a JSON string (device-update-plug-
    and-play.md); the factory application's own id before any update."""
    if st.get("installed") and not (st.get("slot") and not _exists(c.du["d"] + "/boot.json")):
        return st["installed"]  # (an application in a slot runs only while boot.json names it)
    du = c.du
    if du.get("update_id"):
        return du["update_id"]
    # As adu_boot.report writes it.
    return '{"provider": %s, "name": %s, "version": %s}' % (
        json.dumps(du["manufacturer"]), json.dumps(du["model"]), json.dumps(VERSION))


def agent_report(c, st):
    """The reported `deviceUpdate` component, in the order az_iot_adu_client_get_agent_state_
    payload writes it. Step results go under lastInstallResult.stepResults as the Plug and Play
    page shows (see _result)."""
    du = c.du
    agent = {"deviceProperties": {"manufacturer": du["manufacturer"], "model": du["model"],
                                  "contractModelId": MODEL_ID, "aduVer": ADU_VER},
             "compatPropertyNames": COMPAT}
    if st.get("res"):
        agent["lastInstallResult"] = st["res"]
    agent["state"] = st.get("state", IDLE)
    if st.get("wf"):
        agent["workflow"] = {"action": st.get("act", APPLY), "id": st["wf"]}
        if st.get("retry"):
            agent["workflow"]["retryTimestamp"] = st["retry"]  # the retry acknowledged
    agent["installedUpdateId"] = installed_id(c, st)
    out = {COMPONENT: {"__t": "c", "agent": agent}}
    if du.get("expiry"):
        out["certExpiry"] = json.loads(du["expiry"])  # edgekit's own: when to re-trust the fleet
    return out


def ack(version, status=200):
    """The writable-property answer to `service` (az_iot_adu_client_get_service_properties_
    response: ac, av, then an empty value)."""
    return {COMPONENT: {"__t": "c", "service": {"ac": status, "av": version, "value": {}}}}


def _result(st, code, ext, details, steps=1):
    # lastInstallResult: resultCode, extendedResultCode, resultDetails, then one result per
    # step (ADU result codes are signed 32-bit).
    res = {"resultCode": code, "extendedResultCode": _i32(ext), "resultDetails": details}
    res["stepResults"] = dict(("step_%d" % i, {"resultCode": code, "extendedResultCode": _i32(ext),
                                               "resultDetails": details}) for i in range(steps))
    st["res"] = res


def _i32(n):
    return n - (1 << 32) if n >= 1 << 31 else n


def kick(c):
    """Handle the desired twin content twin.py kept for the agent, if any."""
    t = c.du.pop("twin", None)
    if not t:
        return
    wf = _workflow(t[0])
    try:
        on_twin(c, t[0], t[1])
        return
    except MemoryError:
        pass
    # Out of heap: the deployment is refused as failed (state 255), not left pending for ever.
    t = None
    c.adu = None
    import gc
    gc.collect()
    no_heap(c, wf)


def _workflow(desired):
    svc = desired.get(COMPONENT)
    svc = svc.get("service") if isinstance(svc, dict) else None
    wf = svc.get("workflow") if isinstance(svc, dict) else None
    return wf if isinstance(wf, dict) else {}


def no_heap(c, wf):
    """The deployment of workflow `wf` ran out of heap (kick): reported failed with E_HEAP, so
    the service sees state 255 instead of a deployment pending for ever."""
    if wf.get("action") != APPLY or not wf.get("id"):
        return
    d = c.du["d"]
    st = load(d)
    if st.get("wf") == wf["id"] and st.get("phase") in ("job", "download", "install"):
        log("update agent: MemoryError")  # under way before the reset: the next twin resumes it
        return
    st["wf"] = wf["id"]
    st["act"] = APPLY
    st["retry"] = wf.get("retryTimestamp")
    _fail(c, st, FAILURE, E_HEAP, "not enough heap for the deployment")
    c.report(agent_report(c, st))


def on_twin(c, desired, whole):
    """A desired patch or the whole desired section (twin.apply_desired): answer `service`,
    act on its workflow, and report the agent (at every connect, so the service sees it)."""
    du = desired.get(COMPONENT)
    svc = du.get("service") if isinstance(du, dict) else None
    d = c.du["d"]
    st = load(d)
    if not isinstance(svc, dict):
        if whole:
            c.report(agent_report(c, st))
        return
    version = desired.get("$version")
    from azure_edge import port as ports
    p = ports.load()
    if hasattr(p, "read_only") and p.read_only():
        # CIRCUITPY not remounted for code (asked here, not at boot: the idle path's few names)
        return _read_only(c, st, svc, version)
    wf = svc.get("workflow") if isinstance(svc.get("workflow"), dict) else {}
    act = wf.get("action")
    wid = wf.get("id")
    status = 200
    if act == CANCEL:
        _cancel(c, st)
    elif act == APPLY and isinstance(wid, str) and wid:
        retry = wf.get("retryTimestamp")
        if wid != st.get("wf") or retry and retry != st.get("retry"):
            # A new deployment, or the service asking to retry this one (a new retryTimestamp).
            st["retry"] = retry
            status = _queue(c, st, svc, wid, True)
        elif st.get("phase") in ("job", "download", "install") and not hasattr(c.adu, "fetch"):
            status = _queue(c, st, svc, wid, False)  # its boot did not run it (no network): again
        else:
            log("ignored deployment %s: already handled" % wid[:40])
    if version != st.get("av"):
        c.report(ack(version, status))
        st = load(d)
        st["av"] = version
        save(d, st)
    c.report(agent_report(c, st))


def _read_only(c, st, svc, version):
    # Nothing can be downloaded, installed or even recorded (the drive is read-only to code):
    # each deployment is refused as it comes, reported from memory.
    wf = svc.get("workflow") if isinstance(svc.get("workflow"), dict) else {}
    status = 200
    if wf.get("action") == APPLY and wf.get("id"):
        st["wf"], st["act"], st["retry"] = wf["id"], APPLY, wf.get("retryTimestamp")
        msg = "CIRCUITPY is read-only to code: boot.py must remount it (docs/updates.md)"
        log("update refused: " + msg)
        _result(st, FAILURE, E_READ_ONLY, msg)
        st["state"] = FAILED
        status = 406
    c.report(ack(version, status))
    c.report(agent_report(c, st))


def _queue(c, st, svc, wid, new):
    # The deployment runs in a boot of its own (azure_edge/adu_apply.py), without the MQTT
    # client, the outbox and the application in the heap: here it is only written to flash and
    # a reset asked for. The job first, then the record naming it: a cut between leaves a job
    # no record names, which that boot drops.
    if st.get("fw") and st.get("phase") == "trial":
        # A firmware image on trial (adu_ota.py): the other slot holds the image the bootloader
        # rolls back to, and a reset now, unmarked, would roll the trial back. Refused, the
        # trial's record kept (ESP-IDF's esp_ota_begin refuses the same:
        # ESP_ERR_OTA_ROLLBACK_INVALID_STATE).
        log("deployment %s refused: a firmware image is on trial" % wid[:40])
        return 406
    d = c.du["d"]
    du = dict((k, v) for k, v in c.du.items() if k not in ("twin", "expiry", "probe"))
    save(d, {"wf": wid, "svc": svc, "du": du, "gw": c.cs.connect_host}, "/job.json")
    du = None
    st["wf"] = wid
    st["act"] = APPLY
    st["state"] = BUSY
    if new:
        st["phase"] = "job"
    save(d, st)
    log("deployment %s: rebooting to apply it" % wid[:40])
    c.reboot_requested = True
    return 200


def _cancel(c, st):
    # A deployment runs in a boot of its own (adu_apply), where no cancel can reach it.
    if st.get("phase") == "trial":
        log("cancel ignored: the update is already on trial")
        return
    if st.get("phase") == "job":  # taken, its boot not run yet (a reset lost)
        try:
            os.remove(c.du["d"] + "/job.json")
        except OSError:
            pass
        _result(st, CANCELLED, 0, "cancelled")
        log("deployment %s cancelled" % st.get("wf"))
    st["phase"] = ""
    st["state"] = IDLE  # cancel also brings a failed agent back to idle (the PnP page)
    st["act"] = CANCEL
    save(c.du["d"], st)


def _fail(c, st, code, ext, msg, steps=1):
    log("update refused: " + msg)
    _result(st, code, ext, msg[:120], steps)
    st["phase"] = ""
    st["state"] = FAILED
    save(c.du["d"], st)


def _exists(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False


def _rmtree(p):
    from azure_edge.slots import _rmtree
    _rmtree(p)
