# The update agent's part of the boot (azure_edge/adu.py): its settings, the trust roots, the
# expiry dates, and what a trial boot or a rollback means for the deployment. Loaded at boot
# only, while the heap is roomy.
from azure_edge import log, unload
from azure_edge.adu import FAILED, FAILURE, MODEL_ID, _exists, _result, _rmtree, load, save


def setup(cfg):
    """At boot, before the TLS context is built: the agent's settings from the bundle's "adu"
    entry, the extra trusted roots (edgekit/trust:1) and the certificates' expiry dates."""
    from azure_edge.state import data_dir
    a = cfg["adu"]
    du = {"manufacturer": "edgekit", "model": cfg["board"] or "esp32", "boots": 3, "minutes": 10}
    if isinstance(a, dict):
        du.update(a)
    du["d"] = data_dir(cfg["bundle_path"])
    # The bundle's folder: its adu_roots.json (more ADU root keys, adu_roots.load) is read for a
    # deployment only; kept here, the keys would sit in the heap for good.
    du["b"] = cfg["bundle_path"]
    from azure_edge import port as ports
    p = ports.load()
    if hasattr(p, "read_only") and p.read_only():
        du["ro"] = 1  # CIRCUITPY not remounted for code: deployments are refused (adu.on_twin)
    if not cfg["model_id"]:
        cfg["model_id"] = MODEL_ID  # the ADU service finds its agents by this model id
    if _exists(du["d"] + "/trust/state.json"):  # roots were added (edgekit/trust:1)
        from azure_edge import trust
        cfg["ca"], du["probe"] = trust.roots(du["d"], cfg["ca"])
    du["expiry"] = expiry(cfg["ca"], cfg["cert"])
    unload("adu", "trust", "slots", "state")  # the agent's code leaves with the boot's
    return du


def boot(c):
    """After the client is built: a trial boot gets its watcher (Client.adu); a trial that was
    rolled back is recorded as the deployment's failure; a pending trust probe is queued."""
    d = c.du["d"]
    st = load(d)
    if st.get("phase") == "trial" and st.get("fw"):  # a firmware image's trial (adu_ota.py)
        from azure_edge import adu_ota
        adu_ota.boot(c, st)
    elif st.get("phase") == "trial":  # only then are the slots of interest here
        from azure_edge import slots
        slot, trial = slots.running(d)
        why = slots.read(d).get("why")
        if trial:
            c.adu = slots.Trial(d)
        elif not why:
            # Cut between the install's record and the switch: install and switch again
            # (the downloads are kept until the trial is decided).
            st["phase"] = "install"
            save(d, st)
        else:
            _rmtree(d + "/dl")
            _result(st, FAILURE, slots.WHY.get(why, 0), "trial application rolled back: " + why)
            st["phase"] = ""  # decided: recorded once, not again at every boot
            st["state"] = FAILED
            st["installed"] = slots.installed_id(d, slot) if slot else None
            st["slot"] = 1
            save(d, st)
            log("update %s rolled back (%s)" % (st.get("uid"), why))
    if c.adu is None and c.du.get("probe"):
        from azure_edge import trust
        c.adu = trust.Probe()
    unload("adu", "trust", "slots", "state", "adu_ota")  # a Trial or a Probe keeps what it needs


def expiry(ca, cert):
    """{"client": notAfter of the client certificate (None without one), "roots": [notAfter of
    each trusted root]}, as ISO 8601 UTC text."""
    cas = ca if isinstance(ca, list) else [ca]
    out = {"client": None, "roots": []}
    try:
        if cert and not isinstance(cert, str):
            out["client"] = not_after(cert[0])
        for der in cas:
            if isinstance(der, str):  # CircuitPython: PEM text, one or more certificates
                import binascii
                for b in der.split("-----BEGIN CERTIFICATE-----")[1:]:
                    b = b.split("-----")[0].replace("\n", "").replace("\r", "")
                    out["roots"].append(not_after(binascii.a2b_base64(b)))
            else:
                out["roots"].append(not_after(der))
    except (ValueError, IndexError):
        pass
    return out


def _tlv(b, i):
    # (tag, start of value, end of value) of the DER element at i.
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


def not_after(der):
    """The certificate's notAfter as "YYYY-MM-DDTHH:MM:SSZ" (RFC 5280 4.1.2.5)."""
    _, i, _ = _tlv(der, 0)        # Certificate
    _, i, _ = _tlv(der, i)        # tbsCertificate
    tag, s, e = _tlv(der, i)
    if tag == 0xA0:               # [0] version
        i = e
    for _ in range(3):            # serialNumber, signature, issuer
        i = _tlv(der, i)[2]
    _, i, _ = _tlv(der, i)        # validity
    i = _tlv(der, i)[2]           # notBefore
    tag, s, e = _tlv(der, i)      # notAfter: UTCTime (YY) or GeneralizedTime (YYYY)
    t = bytes(der[s:e]).decode()
    if tag == 0x17:
        t = ("19" if int(t[:2]) >= 50 else "20") + t
    elif tag != 0x18:
        raise ValueError("no validity time")
    return "%s-%s-%sT%s:%s:%sZ" % (t[:4], t[4:6], t[6:8], t[8:10], t[10:12], t[12:14])
