# The simulated board's filesystem: the flash folder on the host, mounted at "/", with the
# board's /data on LittleFS over a counting NOR chip (_simnor.py), as a board keeps its
# state on LittleFS.
#
# /data is not a mount of its own: on a board "/" is one LittleFS, and the firmware renames
# an old outbox from /edgekit/outbox to /data/outbox (azure_edge/state.py), which MicroPython
# refuses across mounts (EPERM). So this one VFS routes each path to the host folder or to
# the LittleFS, and a rename from one to the other copies (see rename()).
#
# Over the unix port's VfsPosix it also fixes two ways that differs from a board's littlefs:
# rename() of two absolute paths (VfsPosix builds both host paths in one shared buffer, so
# the second overwrites the first) and ilistdir() entries without a size (mpremote's
# `fs ls` shows sizes from them). It keeps the working folder itself, since a path may
# lead to either side.
import vfs

DATA = "/data"


class Flash:
    def __init__(self, root, data=None):
        # data: a VfsLfs2 (or any VFS object) holding /data, or None for a plain folder.
        self._v = vfs.VfsPosix(root)
        self._host = vfs.VfsPosix()
        self._root = root.rstrip("/")
        self._data = data
        self._cwd = "/"

    def mount(self, readonly, mkfs):
        pass

    def umount(self):
        pass

    def _abs(self, path):
        if path[:1] != "/":
            path = self._cwd.rstrip("/") + "/" + path
        parts = []
        for p in path.split("/"):
            if p == "..":
                if parts:
                    parts.pop()
            elif p and p != ".":
                parts.append(p)
        return "/" + "/".join(parts)

    def _route(self, path):
        # (the VFS, the path on it) for a board path.
        path = self._abs(path)
        if self._data is not None and (path == DATA or path[:len(DATA) + 1] == DATA + "/"):
            return self._data, path[len(DATA):] or "/"
        return self._v, path

    def ilistdir(self, path):
        fs, p = self._route(path)
        if fs is not self._v:
            yield from fs.ilistdir(p)
            return
        base = p.rstrip("/") + "/"
        seen_data = False
        for e in self._v.ilistdir(p):
            size = 0
            if e[1] == 0x8000:
                try:
                    size = self._v.stat(base + e[0])[6]
                except OSError:
                    pass
            seen_data = seen_data or base + e[0] == DATA
            yield (e[0], e[1], e[2], size)
        if self._data is not None and p == "/" and not seen_data:
            yield (DATA[1:], 0x4000, 0, 0)  # the mount point, as a board lists its folder

    def open(self, path, mode):
        fs, p = self._route(path)
        return fs.open(p, mode)

    def stat(self, path):
        fs, p = self._route(path)
        return fs.stat(p)

    def statvfs(self, path):
        fs, p = self._route(path)
        return fs.statvfs(p)

    def mkdir(self, path):
        fs, p = self._route(path)
        if p == "/":
            raise OSError(17)  # EEXIST: /data always exists
        fs.mkdir(p)

    def rmdir(self, path):
        fs, p = self._route(path)
        fs.rmdir(p)

    def remove(self, path):
        fs, p = self._route(path)
        fs.remove(p)

    def rename(self, old, new):
        src, a = self._route(old)
        dst, b = self._route(new)
        if src is self._v and dst is self._v:
            self._host.rename(self._root + a, self._root + b)
        elif src is dst:
            src.rename(a, b)
        else:
            _move(src, a, dst, b)

    def chdir(self, path):
        path = self._abs(path)
        if not self.stat(path)[0] & 0x4000:
            raise OSError(20)  # ENOTDIR
        self._cwd = path

    def getcwd(self):
        return self._cwd


def _move(src, a, dst, b):
    # A rename between the host folder and /data, which one LittleFS on a board does in one
    # step. Copied to B.tmp, renamed to B, then A removed: a power cut leaves either A alone,
    # or A and B (state.migrate then leaves the old one in place, never sends a record twice).
    tmp = b + ".tmp"
    _rmtree(dst, tmp)
    _copy(src, a, dst, tmp)
    dst.rename(tmp, b)
    _rmtree(src, a)


def _copy(src, a, dst, b):
    if src.stat(a)[0] & 0x4000:
        dst.mkdir(b)
        for e in list(src.ilistdir(a)):
            _copy(src, a + "/" + e[0], dst, b + "/" + e[0])
        return
    buf = bytearray(512)
    fi = src.open(a, "rb")
    fo = dst.open(b, "wb")
    while True:
        n = fi.readinto(buf)
        if not n:
            break
        fo.write(buf[:n])
    fi.close()
    fo.close()


def _rmtree(fs, path):
    try:
        mode = fs.stat(path)[0]
    except OSError:
        return
    if mode & 0x4000:
        for e in list(fs.ilistdir(path)):
            _rmtree(fs, path + "/" + e[0])
        fs.rmdir(path)
    else:
        fs.remove(path)
