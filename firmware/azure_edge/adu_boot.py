# The update agent's part of the boot (azure_edge/adu.py): its settings, the trust roots, the
# expiry dates, and what a trial boot or a rollback means for the deployment. Loaded at boot
# only, while the heap is roomy.
import json

from azure_edge import log, unload
from azure_edge.adu import FAILED, FAILURE, MODEL_ID, _result, _rmtree, load, save


def setup(cfg):
    """At boot, before the TLS context is built: the agent's settings from the bundle's "adu"
    entry, the extra trusted roots (edgekit/trust:1) and the certificates' expiry dates."""
    from azure_edge import trust
    a = cfg["adu"]
    du = {"manufacturer": "edgekit", "model": cfg["board"] or "esp32", "boots": 3, "minutes": 10}
    if isinstance(a, dict):
        du.update(a)
    du["d"] = trust.root_dir(cfg["bundle_path"])
    if isinstance(du.get("roots"), str):
        # ADU root keys (adu_verify's format), a file in the bundle; None: adu_verify's own.
        with open(cfg["bundle_path"] + "/" + du["roots"]) as f:
            du["roots"] = json.load(f)
    if not cfg["model_id"]:
        cfg["model_id"] = MODEL_ID  # the ADU service finds its agents by this model id
    cfg["ca"], du["probe"] = trust.roots(du["d"], cfg["ca"])
    du["expiry"] = trust.expiry(cfg["ca"], cfg["cert"])
    unload("adu", "trust", "slots", "state")  # the agent's code leaves with the boot's
    return du


def boot(c):
    """After the client is built: a trial boot gets its watcher (Client.adu); a trial that was
    rolled back is recorded as the deployment's failure; a pending trust probe is queued."""
    from azure_edge import slots
    d = c.du["d"]
    st = load(d)
    slot, trial = slots.running(d)
    if st.get("phase") == "trial":
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
            st["state"] = FAILED
            st["installed"] = slots.installed_id(d, slot) if slot else None
            save(d, st)
            log("update %s rolled back (%s)" % (st.get("uid"), why))
    if c.adu is None and c.du.get("probe"):
        from azure_edge import trust
        c.adu = trust.Probe()
    unload("adu", "trust", "slots", "state")  # a Trial or a Probe keeps what it needs
