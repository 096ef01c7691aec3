# Application slots for over-the-air updates (handler edgekit/app:1, docs/updates.md).
#
# What `edgekit deploy` writes (/main.py and /lib) is the factory application and is never
# touched here. An update is installed whole into a slot, DATA/slots/a or DATA/slots/b, each
# with its own main.py and lib/; the slot's `.id` file, written last, says it is complete.
# DATA/boot.json says what runs: {"run": good slot ("" the factory), "try": slot on trial,
# "n": trial boots so far, "k": boots allowed, "t": seconds to connect, "why": last rollback}.
# It is only ever replaced whole (write, then rename), so a power cut at any moment leaves the
# old record or the new one: the old application or the new one boots, never a mix.
#
# firmware/main.py calls start.boot() first, which asks boot() here what to run and runs it
# (runslot.run). A slot on trial that fails to import is rolled back at once; one that has booted k times without being marked good (crashes, resets) is rolled
# back at the next boot; one not connected within t seconds is rolled back by trial.Trial.
import os
import sys

from azure_edge import log
from azure_edge.trial import T_SECONDS, read, running  # noqa: F401  (boot.json's reading side)

K_BOOTS = 3
# Why a trial ended badly: boot.json's "why", reported as the step's extended result code.
WHY = {"import": 0x7E000201, "crash": 0x7E000202, "connect": 0x7E000203, "missing": 0x7E000204}


def root(bundle_path=None):
    """The data folder of this bundle (azure_edge.state.data_dir)."""
    from azure_edge.state import data_dir
    if not bundle_path:
        bundle_path = os.getenv("EDGEKIT_BUNDLE") if hasattr(os, "getenv") else None
        bundle_path = bundle_path or ("/edgekit" if _exists("/edgekit") else "edgekit")
    return data_dir(bundle_path)


def write(d, st):
    """Replace boot.json whole: written beside it, synced by close, renamed over it."""
    import json
    _mkdirs(d)
    tmp = d + "/boot.json.new"
    with open(tmp, "w") as f:
        json.dump(st, f)
    try:
        os.rename(tmp, d + "/boot.json")  # LittleFS and POSIX replace the target atomically
    except OSError:
        _rm(d + "/boot.json")  # FAT (CircuitPython) does not: read() falls back to .new
        os.rename(tmp, d + "/boot.json")


def boot(bundle_path=None):
    """The application boot.json names, its boot counted when on trial: (d, st, slot, trial)
    for runslot.run to run, or None for the factory's."""
    if sys.path and "/slots/" in sys.path[0]:
        return None  # called again by the slot's own main.py: it is the one running
    d = root(bundle_path)
    st = read(d)
    slot = st.get("try") or st.get("run") or ""
    if not slot:
        return None
    trial = slot == st.get("try")
    if trial:
        st["n"] = st.get("n", 0) + 1
        if st["n"] > st.get("k", K_BOOTS):
            return _back(d, st, "crash")  # booted k times, never marked good
        write(d, st)
    if not _exists(d + "/slots/" + slot + "/.id"):
        return _back(d, st, "missing") if trial else _factory(d, st)
    return d, st, slot, trial


def _back(d, st, why):
    # Roll the trial back: the good slot (or the factory) runs from now on.
    log("rolled back slot %s (%s)" % (st.get("try"), why))
    st["try"] = ""
    st["n"] = 0
    st["why"] = why
    write(d, st)
    return boot_good(d, st)


def boot_good(d, st):
    slot = st.get("run") or ""
    if slot and _exists(d + "/slots/" + slot + "/.id"):
        return d, st, slot, False
    return None  # the factory application


def _factory(d, st):
    st["run"] = ""
    write(d, st)
    return None


def installed_id(d, slot):
    """The update id (a JSON string) of the slot's content, None for the factory."""
    try:
        with open(d + "/slots/" + slot + "/.id") as f:
            return f.read()
    except OSError:
        return None


def spare(d):
    """The slot an update may be written to: neither the good one nor one on trial."""
    st = read(d)
    used = (st.get("run"), st.get("try"))
    return "b" if "a" in used else "a"


def install(d, files, update_id, unpacked=None):
    """Write the verified downloads `files` [(path, fileName)] into the spare slot, whole;
    return the slot. A .tar is unpacked (main.py and lib/...); main.py is the entry; any other
    file goes to lib/. The slot's .id is written last: without it the slot never boots.
    unpacked: the slot that holds the update already (adu_fetch.Unpack unpacked its .tar into
    it as it streamed, and its hash was checked since): only the .id is left to write."""
    slot = unpacked or spare(d)
    s = d + "/slots/" + slot
    if unpacked:
        st = read(d)
        if slot in (st.get("run"), st.get("try")):  # never the application that runs
            raise ValueError("slot %s holds the running application" % slot)
    else:
        _rmtree(s)
    _mkdirs(s + "/lib")
    for path, name in files:
        if name.endswith(".tar"):
            _untar(path, s)
        else:
            _copy(path, s + ("/main.py" if name == "main.py" else "/lib/" + name))
    if not _exists(s + "/main.py"):
        raise ValueError("the update has no main.py")
    with open(s + "/.id.new", "w") as f:
        f.write(update_id)
    os.rename(s + "/.id.new", s + "/.id")
    return slot


def switch(d, slot, k=K_BOOTS, t=T_SECONDS):
    """Boot `slot` on trial from the next boot on (one rename: the switch is atomic)."""
    st = read(d)
    st["try"] = slot
    st["n"] = 0
    st["k"] = k
    st["t"] = t
    st["why"] = ""
    write(d, st)


def good(d):
    """The trial slot connected and reported: it is the good one now."""
    st = read(d)
    if st.get("try"):
        st["run"] = st["try"]
        st["try"] = ""
        st["n"] = 0
        write(d, st)


def rollback(d, why):
    st = read(d)
    if st.get("try"):
        st["try"] = ""
        st["n"] = 0
        st["why"] = why
        write(d, st)


def _untar(path, s):
    # Plain ustar, streamed a 512-byte block at a time: regular files only, no absolute paths
    # and no "..", nothing outside the slot.
    buf = bytearray(512)
    with open(path, "rb") as f:
        while f.readinto(buf) == 512 and buf[0]:
            # (partition, not split(b"\0"): split builds a list of empty strings from the NULs)
            name = bytes(buf[:100]).partition(b"\0")[0].decode()
            prefix = bytes(buf[345:500]).partition(b"\0")[0].decode()
            if prefix:
                name = prefix + "/" + name
            size = int(bytes(buf[124:136]).partition(b"\0")[0].strip() or b"0", 8)
            kind = buf[156]
            blocks = (size + 511) // 512
            if name.startswith("/") or ".." in name.split("/"):
                raise ValueError("unsafe path in the update: " + name[:60])
            if kind in (0, 48):  # regular file ('0' or NUL)
                _mkdirs(s + "/" + name.rsplit("/", 1)[0] if "/" in name else s)
                with open(s + "/" + name, "wb") as out:
                    left = size
                    while blocks:
                        f.readinto(buf)
                        out.write(memoryview(buf)[:min(512, left)])
                        left -= 512
                        blocks -= 1
            else:
                for _ in range(blocks):  # directories and the rest: skipped (made as needed)
                    f.readinto(buf)


def _copy(src, dst):
    buf = bytearray(512)
    _mkdirs(dst.rsplit("/", 1)[0])
    with open(src, "rb") as a, open(dst, "wb") as b:
        while True:
            n = a.readinto(buf)
            if not n:
                break
            b.write(memoryview(buf)[:n])


def _exists(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False


def _rm(p):
    try:
        os.remove(p)
    except OSError:
        pass


def _rmtree(p):
    try:
        names = os.listdir(p)
    except OSError:
        return _rm(p)
    for n in names:
        _rmtree(p + "/" + n)
    try:
        os.rmdir(p)
    except OSError:
        pass


def _mkdirs(p):
    if not p or _exists(p):
        return
    i = p.rfind("/")
    if i > 0:
        _mkdirs(p[:i])
    try:
        os.mkdir(p)
    except OSError:
        pass
