# Where the device keeps its own state (the outbox), apart from the bundle that deploy writes.
# A deploy replaces the bundle; what the device queued must never ride along or be overwritten.
#   board (bundle /edgekit):       /data/outbox
#   host  (bundle HOME/bundles/D): HOME/.edgekit/outbox/D  (D-M for a module identity)
import os


def outbox_path(bundle_path, device_id, module_id=None):
    """The outbox folder for this bundle and identity (docs/outbox.md)."""
    bundle_path = bundle_path.rstrip("/") or "/"
    parent, name = _split(bundle_path)
    if name == "edgekit":
        # The board layout deploy writes: the bundle is /edgekit, state goes beside it.
        return _join(parent, "data/outbox")
    key = device_id + ("-" + module_id if module_id else "")
    home, _ = _split(parent) if parent != "." else (".", "")
    return _join(home, ".edgekit/outbox/" + key)


def data_dir(bundle_path):
    """Where the update agent keeps its slots and records (docs/updates.md): /data on a board
    (beside /edgekit), HOME/.edgekit/data/B on the host for bundle HOME/bundles/B. Never inside
    the bundle, which a deploy replaces."""
    parent, name = _split(bundle_path.rstrip("/") or "/")
    if name == "edgekit":
        return _join(parent, "data")
    home, _ = _split(parent) if parent != "." else (".", "")
    return _join(home, ".edgekit/data/" + name)


def data_of(bundle_path=None):
    """data_dir of this bundle, or of the one the firmware finds ($EDGEKIT_BUNDLE, /edgekit)."""
    if not bundle_path:
        bundle_path = os.getenv("EDGEKIT_BUNDLE") if hasattr(os, "getenv") else None
        bundle_path = bundle_path or ("/edgekit" if _exists("/edgekit") else "edgekit")
    return data_dir(bundle_path)


def migrate(old, new, log):
    """Move an outbox left at `old` (firmware before 0.2 kept it in the bundle) to `new`.

    Renamed, not copied: the records stay byte for byte and nothing is sent twice. When both
    exist the old one is left where it is and said so, never deleted.
    """
    if not _exists(old):
        return
    if _exists(new):
        log("an old outbox is still at %s (the new one is %s): left in place" % (old, new))
        return
    _makedirs(_split(new)[0])
    try:
        os.rename(old, new)
    except OSError as e:
        log("old outbox %s not moved to %s (%s): left in place" % (old, new, e))
        return
    log("outbox moved from %s to %s" % (old, new))


def prepare(path):
    """Create the folders above the outbox folder (the outbox creates its own)."""
    _makedirs(_split(path)[0])


def _split(path):
    i = path.rfind("/")
    if i < 0:
        return ".", path
    return (path[:i] or "/"), path[i + 1:]


def _join(folder, rest):
    if folder == "/":
        return "/" + rest
    return folder + "/" + rest


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _makedirs(path):
    if path in ("", ".", "/") or _exists(path):
        return
    _makedirs(_split(path)[0])
    try:
        os.mkdir(path)
    except OSError:
        pass  # made meanwhile, or read-only: the outbox open says which
