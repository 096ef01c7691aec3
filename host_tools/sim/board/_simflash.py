# The simulated board's filesystem: the flash folder on the host, mounted at "/".
# A thin layer over the unix port's VfsPosix that fixes two ways it differs from a
# board's littlefs: rename() of two absolute paths (VfsPosix builds both host paths
# in one shared buffer, so the second overwrites the first) and ilistdir() entries
# without a size (mpremote's `fs ls` shows sizes from them).
import vfs


class Flash:
    def __init__(self, root):
        self._v = vfs.VfsPosix(root)
        self._host = vfs.VfsPosix()
        self._root = root.rstrip("/")

    def mount(self, readonly, mkfs):
        pass

    def umount(self):
        pass

    def ilistdir(self, path):
        base = path.rstrip("/") + "/"
        for e in self._v.ilistdir(path):
            size = 0
            if e[1] == 0x8000:
                try:
                    size = self._v.stat(base + e[0])[6]
                except OSError:
                    pass
            yield (e[0], e[1], e[2], size)

    def open(self, path, mode):
        return self._v.open(path, mode)

    def stat(self, path):
        return self._v.stat(path)

    def statvfs(self, path):
        return self._v.statvfs(path)

    def mkdir(self, path):
        self._v.mkdir(path)

    def rmdir(self, path):
        self._v.rmdir(path)

    def remove(self, path):
        self._v.remove(path)

    def rename(self, old, new):
        self._host.rename(self._host_path(old), self._host_path(new))

    def chdir(self, path):
        self._v.chdir(path)

    def getcwd(self):
        return self._v.getcwd()

    def _host_path(self, path):
        if path[:1] != "/":
            path = self._v.getcwd().rstrip("/") + "/" + path
        return self._root + path
