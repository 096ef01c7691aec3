# The update agent's idle path (the agent itself is azure_edge/adu.py): at boot its settings,
# the trust roots and the certificates' expiry dates; at each connect the twin's deviceUpdate
# checked and the agent reported. Only a deployment that is new, to resume or to cancel, and a
# trial, load the agent.
#
# This module loads at every boot and connect of a device with the agent on, and MicroPython
# interns every name of a module as it loads it, for good: argument and global names, and
# string literals of up to 10 characters (the next pool of names costs ~7 KiB of heap;
# docs/updates.md, Heap). So the report is built from text, and short keys are split from a
# longer string into locals, which are not interned.
import json
import os

from azure_edge import log, run_and_unload, unload


def setup(cfg):
    """At boot, before the TLS context is built: the agent's settings from the bundle's "adu"
    entry, the extra trusted roots (edgekit/trust:1) and the certificates' expiry dates."""
    from azure_edge.state import data_dir
    d, model, trust = "d model trust".split()
    # Kept for good (Client.du): the data folder (d) and the bundle's (b), whose adu_roots.json
    # (more ADU root keys, adu_roots.load) is read for a deployment only; trial boots and
    # minutes are defaults of the deployment (adu_job).
    data = data_dir(cfg["bundle_path"])
    du = {"manufacturer": "edgekit", model: cfg["board"] or "esp32", d: data, "b": cfg["bundle_path"]}
    if isinstance(cfg["adu"], dict):
        du.update(cfg["adu"])
    if not cfg["model_id"]:
        cfg["model_id"] = "dtmi:azure:iot:deviceUpdateContractModel;2"  # how ADU finds its agents
    if _exists(data + "/trust/state.json"):  # roots were added (edgekit/trust:1)
        run_and_unload(trust, "setup", cfg, du)
    du["expiry"] = json.dumps(expiry(cfg["ca"], cfg["cert"]))  # as text: a third of its dict's heap
    unload("state")
    return du


def boot(c):
    """After the client is built: a trial boot (or the one after a rollback) goes to the agent
    (adu.boot); a pending trust probe is queued (trust.boot)."""
    d, phase, trial, probe, trust = "d phase trial probe trust".split()
    state = load(c.du[d])
    if state.get(phase) == trial:
        run_and_unload("adu", "boot", c, state)
    if c.adu is None and c.du.get(probe):
        run_and_unload(trust, "boot", c)


def kick(c):
    """The twin content twin.py kept for the agent (c.du["twin"]), from the client's loop
    (azure_edge.step). True: a deployment that is new, retried, cancelled or to resume, left for
    the agent (adu.kick, loaded once this module is gone). Else a workflow handled already is
    acknowledged at a new $version, and the agent is reported after each connect, as
    adu.on_twin does."""
    d, wf, retry, phase, av, service, workflow = "d wf retry phase av service workflow".split()
    du = c.du
    desired, whole = du["twin"]
    svc = desired.get("deviceUpdate")
    svc = svc.get(service) if isinstance(svc, dict) else None
    state = load(du[d])
    if isinstance(svc, dict):
        flow = svc.get(workflow)
        flow = flow if isinstance(flow, dict) else {}
        wid = flow.get("id")
        retried = flow.get("retryTimestamp")
        if flow.get("action") != 3 or not wid or wid != state.get(wf) or retried and retried != state.get(retry) \
                or state.get(phase) in "job download install".split():
            return True  # a new deployment, a retry, a cancel or a resume (its boot did not run it)
        log("ignored deployment %s: already handled" % wid[:40])
        version = desired.get("$version")
        if version != state.get(av):
            # az_iot_adu_client_get_service_properties_response, as adu.ack writes it
            ack = '{"deviceUpdate": {"__t": "c", "service": {"ac": 200, "av": %s, "value": {}}}}'
            c.report(json.loads(ack % json.dumps(version)))
            state[av] = version
            write(du[d], state)
    elif not whole:
        du.pop("twin")
        return
    du.pop("twin")
    c.report(report(c, state))


def report(c, state):
    """The reported deviceUpdate component (and certExpiry) for the agent's state, exactly as
    adu.agent_report builds it (tests/test_adu_agent.py checks the two agree)."""
    d, model, res, wf, act, retry, installed, slot, update_id = \
        "d model res wf act retry installed slot update_id".split()
    du = c.du
    parts = []
    if state.get(res):
        parts.append('"lastInstallResult": ' + json.dumps(state[res]))
    parts.append('"state": %d' % state.get("state", 0))
    if state.get(wf):
        flow = {"action": state.get(act, 3), "id": state[wf]}
        if state.get(retry):
            flow["retryTimestamp"] = state[retry]
        parts.append('"workflow": ' + json.dumps(flow))
    # installedUpdateId: what really runs (an application in a slot runs only while boot.json
    # names it), else the factory application's own id.
    uid = state.get(installed)
    if not uid or state.get(slot) and not _exists(du[d] + "/boot.json"):
        from azure_edge import VERSION
        uid = du.get(update_id) or '{"provider": %s, "name": %s, "version": %s}' % (
            json.dumps(du["manufacturer"]), json.dumps(du[model]), json.dumps(VERSION))
    parts.append('"installedUpdateId": ' + json.dumps(uid))
    # deviceProperties: az_iot_adu_client.h's AZ_IOT_ADU_CLIENT_AGENT_MODEL_ID, _AGENT_VERSION and
    # _AGENT_DEFAULT_COMPATIBILITY_PROPERTIES; certExpiry is edgekit's own.
    exp = du.get("expiry")  # JSON text (setup)
    return json.loads(
        '{"deviceUpdate": {"__t": "c", "agent": {"deviceProperties": {"manufacturer": %s, "model": %s, '
        '"contractModelId": "dtmi:azure:iot:deviceUpdateContractModel;2", "aduVer": "DU;agent/1.0.0"}, '
        '"compatPropertyNames": "manufacturer,model", %s}}%s}'
        % (json.dumps(du["manufacturer"]), json.dumps(du[model]), ", ".join(parts),
           ', "certExpiry": ' + exp if exp else ""))


def load(path):
    """The agent's state file in data folder `path` (as adu.load)."""
    new = path + "/adu.json.new"
    for p in (new[:-4], new):  # .new: cut between remove and rename (FAT)
        try:
            with open(p) as f:
                state = json.load(f)
            if isinstance(state, dict):
                return state
        except (OSError, ValueError):
            pass
    return {"state": 0}


def write(path, state):
    """Replace the state file in data folder `path` whole (as adu.save)."""
    new = path + "/adu.json.new"
    with open(new, "wb") as f:
        f.write(json.dumps(state).encode())
    try:
        os.rename(new, new[:-4])
    except OSError:
        os.remove(new[:-4])
        os.rename(new, new[:-4])


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def expiry(ca, cert):
    """{"client": notAfter of the client certificate (None without one), "roots": [notAfter of
    each trusted root]}, as ISO 8601 UTC text."""
    cas = ca if isinstance(ca, list) else [ca]
    client, roots = None, []
    try:
        if cert and not isinstance(cert, str):
            client = not_after(cert[0])
        for der in cas:
            if isinstance(der, str):  # CircuitPython: PEM text, one or more certificates
                # (no short literal here: each is interned for good when this module loads, and
                # the idle path's names are counted; a2b_base64 skips the line breaks)
                import binascii
                begin = "-----BEGIN CERTIFICATE-----"
                for b in der.split(begin)[1:]:
                    roots.append(not_after(binascii.a2b_base64(b[:b.index(begin[:5])])))
            else:
                roots.append(not_after(der))
    except (ValueError, IndexError):
        pass
    return json.loads('{"client": %s, "roots": %s}' % (json.dumps(client), json.dumps(roots)))


def _header_at(b, i):
    # (tag, start of value, end of value) of the DER element whose header is at i.
    tag = b[i]
    n = b[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7F
        n = 0
        for x in b[i:i + k]:
            n = n << 8 | x
        i += k
    if i + n > len(b):
        raise ValueError("truncated DER")
    return tag, i, i + n


def not_after(cert):
    """The certificate's notAfter as "YYYY-MM-DDTHH:MM:SSZ" (RFC 5280 4.1.2.5)."""
    _, i, _ = _header_at(cert, 0)           # Certificate
    _, i, _ = _header_at(cert, i)           # tbsCertificate
    tag, s, e = _header_at(cert, i)
    if tag == 0xA0:               # [0] version
        i = e
    for _ in range(3):            # serialNumber, signature, issuer
        i = _header_at(cert, i)[2]
    _, i, _ = _header_at(cert, i)           # validity
    i = _header_at(cert, i)[2]              # notBefore
    tag, s, e = _header_at(cert, i)         # notAfter: UTCTime (YY) or GeneralizedTime (YYYY)
    t = bytes(cert[s:e]).decode()
    if tag == 0x17:
        t = str(20 - (int(t[:2]) >= 50)) + t  # YY: 50-99 are 19YY
    elif tag != 0x18:
        raise ValueError("no validity time")
    return "%s-%s-%sT%s:%s:%sZ" % (t[:4], t[4:6], t[6:8], t[8:10], t[10:12], t[12:14])
