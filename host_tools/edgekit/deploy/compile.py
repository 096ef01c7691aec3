"""The /lib build: the plan's sources turned into the exact bytes the board gets.

The one place a board's /lib is built, for deploy, the tests and the bench alike.
MicroPython library code becomes .mpy (mpy-cross, edgekit.mpy), MiniMQTT trimmed first
(edgekit.slim), cached under build/deploy/<arch>/ and reused while the source, the arch,
the trimming rules and the mpy-cross version stay the same. build_lib() writes the
result as a folder, the board's /lib.
"""
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgekit import FIRMWARE_DIR, STATE_DIR, mpy, sha256_file, slim
from edgekit.deploy.plan import DeployError, lib_sources

BuildError = DeployError  # what the /lib build raises (one class: deploy reports it the same way)

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
    try:
        return mpy.version()
    except mpy.MpyCrossError as e:
        raise DeployError(str(e)) from None


def compile_source(src, dst, arch=None, source_name=None, flags=(), keep=()):
    """Compile one library file as a board gets it: MiniMQTT trimmed first (slim.py; `keep`
    names methods to leave in), then mpy-cross.

    DeployError with the compiler's or the trimming's message on failure.
    """
    src = Path(src)
    try:
        if not slim.applies(src):
            return mpy.compile_file(src, dst, arch, source_name, flags)
        with tempfile.TemporaryDirectory() as tmp:
            trimmed = Path(tmp) / src.name
            trimmed.write_text(slim.slim_source(src.read_text(), src.name, keep))
            return mpy.compile_file(trimmed, dst, arch, source_name or src.name, flags)
    except (mpy.MpyCrossError, slim.SlimError) as e:
        raise DeployError(str(e)) from None


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
            compile_source(source.path, out, arch=self.arch, source_name=source.board_path)
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


def build_lib(outdir, arch=None, runtime="micropython", firmware_dir=None, build_dir=None):
    """Build a board's /lib into outdir as deploy ships it; [(path relative to outdir, bytes)].

    build_dir: the compile cache (default: a fresh temporary one, so parallel callers never
    share an index).
    """
    sources = lib_sources(runtime, firmware_dir or FIRMWARE_DIR)
    return _write(sources, outdir, runtime, arch, build_dir)


def compile_tree(outdir, arch=None, firmware_dir=None):
    """The firmware package alone (azure_edge/*.mpy) compiled into outdir; [(relative path, bytes)]."""
    sources = [s for s in lib_sources("micropython", firmware_dir or FIRMWARE_DIR)
               if s.board_path.startswith("/lib/azure_edge/")]
    return _write(sources, outdir, "micropython", arch, None)


def _write(sources, outdir, runtime, arch, build_dir):
    outdir = Path(outdir)
    with tempfile.TemporaryDirectory() as tmp:
        payloads, _ = build(sources, runtime, arch=arch, build_dir=build_dir or tmp)
        built = []
        for p in payloads:
            rel = Path(p.board_path[len("/lib/"):])
            (outdir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p.local, outdir / rel)
            built.append((rel, p.size))
    return built
