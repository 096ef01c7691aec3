"""What goes where on the board: the deploy plan, as data.

Board layout (the firmware relies on it):
  MicroPython   /main.py, /boot.py (if any), /lib/azure_edge/*.mpy, /lib/<firmware/lib>.mpy,
                /lib/adafruit_minimqtt/*.mpy (MiniMQTT trimmed: host_tools/edgekit/slim.py), /edgekit/<bundle>,
                /.edgekit-manifest.json; the device's own state in /data (outbox: /data/outbox)
  CircuitPython /code.py, /lib/... as .py sources (also adafruit_connection_manager and
                adafruit_hashlib), /edgekit/<bundle>, /settings.toml
"""
import hashlib
from dataclasses import dataclass
from pathlib import Path


MANIFEST = "/.edgekit-manifest.json"
BUNDLE_DIR = "/edgekit"
# The device's own state on the board (firmware/azure_edge/state.py): /data, and the outbox
# folder inside the bundle that firmware before 0.2 used. A deploy never writes, overwrites or
# removes anything under them, whatever the bundle folder or the board's manifest holds.
STATE_DIRS = ("/data", BUNDLE_DIR + "/outbox")
# The update agent's slot selection (firmware azure_edge/slots.py): what main.py runs instead of
# itself. A deploy clears it, so the application just deployed is the one that runs; the slots
# and the agent's record stay (docs/updates.md).
SLOT_SELECTION = ("/data/boot.json", "/data/boot.json.new")
# Local folders in a bundle that are host state, never deployment input.
_BUNDLE_STATE = ("outbox",)


def is_state(board_path):
    """True for a board path inside the device's state folders (deploy leaves it alone)."""
    return any(board_path == d or board_path.startswith(d + "/") for d in STATE_DIRS)


class DeployError(Exception):
    """Something the user must fix before a deploy can go on (message says what to do)."""


@dataclass(frozen=True)
class Source:
    """One file of the plan before compiling: where it comes from and where it goes."""

    board_path: str   # absolute path on the board, as a .py (compile decides the suffix)
    path: Path        # local source file
    compile: bool     # True: ship as .mpy (MicroPython library code)


# The MQTT client and what it imports, shipped beside the firmware (module paths in site-packages).
# On MicroPython, azure_edge.net stands in for adafruit_connection_manager (10 KB less heap),
# MiniMQTT's topic matcher (2 KB) and, with the time module, adafruit_ticks (3 KB);
# CircuitPython boards get the real ones.
MQTT_DEPS = ("adafruit_minimqtt/__init__.py", "adafruit_minimqtt/adafruit_minimqtt.py")
# CircuitPython 9.x hashes only sha1, so SAS signing needs the pure-Python SHA-256 there.
CIRCUITPYTHON_DEPS = MQTT_DEPS + ("adafruit_minimqtt/matcher.py", "adafruit_ticks.py",
                                  "adafruit_connection_manager.py",
                                  "adafruit_hashlib/__init__.py",
                                  "adafruit_hashlib/_md5.py", "adafruit_hashlib/_sha1.py",
                                  "adafruit_hashlib/_sha256.py", "adafruit_hashlib/_sha512.py")


def mqtt_sources(runtime="micropython"):
    """(board-relative name, local path) of every MQTT dependency file this runtime needs."""
    import adafruit_minimqtt
    import adafruit_ticks

    site = Path(adafruit_ticks.__file__).resolve().parent
    # MiniMQTT from wherever it is imported (PYTHONPATH first: make test-minimqtt).
    mqtt_site = Path(adafruit_minimqtt.__file__).resolve().parent.parent
    out = []
    for rel in CIRCUITPYTHON_DEPS if runtime == "circuitpython" else MQTT_DEPS:
        path = (mqtt_site if rel.startswith("adafruit_minimqtt/") else site) / rel
        if not path.exists():
            raise DeployError(f"{rel} is not installed; run 'make setup'")
        out.append((rel, path))
    return out


def lib_sources(runtime, firmware_dir):
    """A board's /lib: the firmware package, firmware/lib and the MQTT client, in copy order."""
    firmware_dir = Path(firmware_dir)
    compile_py = runtime == "micropython"
    if not (firmware_dir / "azure_edge" / "__init__.py").is_file():
        raise DeployError(f"{firmware_dir}/azure_edge/ is not the firmware package (no __init__.py)")
    sources = _tree(firmware_dir / "azure_edge", "/lib/azure_edge", compile_py)
    sources += _tree(firmware_dir / "lib", "/lib", compile_py)
    sources += [Source(f"/lib/{name}", path, compile_py) for name, path in mqtt_sources(runtime)]
    return sources


def _tree(root, board_dir, compile_py):
    out = []
    if not root.is_dir():
        return out
    for path in sorted(root.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts or path.suffix in (".pyc", ".mpy"):
            continue
        rel = path.relative_to(root).as_posix()
        out.append(Source(f"{board_dir}/{rel}", path, compile_py and path.suffix == ".py"))
    return out


def bundle_sources(bundles_dir, device, runtime):
    """The device bundle's files; DeployError when the bundle is missing."""
    bundle = Path(bundles_dir) / device
    if not (bundle / "config.json").is_file():
        raise DeployError(f"no bundle for device '{device}' in {bundles_dir}/"
                          f" (make it first: edgekit bundle {device} --connection-string ... --ca ...)")
    out = []
    for path in sorted(bundle.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(bundle).as_posix()
        if rel.split("/")[0] in _BUNDLE_STATE:
            continue  # a host run's outbox (older firmware kept it in the bundle): state, not input
        if rel == "settings.toml":
            # CircuitPython reads settings.toml (Wi-Fi) from the drive root only.
            if runtime == "circuitpython":
                out.append(Source("/settings.toml", path, False))
            continue
        out.append(Source(f"{BUNDLE_DIR}/{rel}", path, False))
    return out


def build_id(sources):
    """12 hex digits of SHA-256 over the firmware's files (board path and content; no bundle):
    the same code gives the same id on every device, any change a new one."""
    h = hashlib.sha256()
    for s in sorted(sources, key=lambda s: s.board_path):
        h.update(s.board_path.encode() + b"\0" + hashlib.sha256(s.path.read_bytes()).digest())
    return h.hexdigest()[:12]


def build_source(sources, runtime, build_dir=None):
    """The Source of /lib/azure_edge/build.py, which the firmware reports as `firmware`."""
    from edgekit.deploy.compile import DEFAULT_BUILD_DIR

    path = Path(build_dir or DEFAULT_BUILD_DIR) / "build-id" / runtime / "build.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f'# Written by edgekit deploy: the build these files are.\nBUILD = "{build_id(sources)}"\n'
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return Source("/lib/azure_edge/build.py", path, runtime == "micropython")


def plan_sources(runtime, device, firmware_dir, bundles_dir, main=None, build_dir=None):
    """Every file a deploy puts on a board of this runtime, in copy order (bundle last).

    main: a file to ship as the board's entry file (main.py or code.py by runtime), e.g.
    firmware/examples/relay.py. The plan also gets /lib/azure_edge/build.py naming the build
    (build_id()), written under build_dir.
    """
    firmware_dir = Path(firmware_dir)
    entry = "main.py" if runtime == "micropython" else "code.py"
    entry_path = Path(main) if main else firmware_dir / entry
    if main and not entry_path.is_file():
        raise DeployError(f"--main {main}: no such file (give a .py entry file, e.g. firmware/examples/relay.py)")
    if main and entry_path.suffix != ".py":
        raise DeployError(f"--main {main}: the entry file must be Python source (.py)")
    if not entry_path.is_file():
        raise DeployError(f"{entry_path} is missing: a {runtime} board needs it as its entry point")
    sources = lib_sources(runtime, firmware_dir)
    sources.append(Source(f"/{entry}", entry_path, False))
    if runtime == "micropython" and (firmware_dir / "boot.py").is_file():
        sources.append(Source("/boot.py", firmware_dir / "boot.py", False))
    sources.append(build_source(sources, runtime, build_dir))
    sources += bundle_sources(bundles_dir, device, runtime)
    seen = {}
    for s in sources:
        if is_state(s.board_path):
            raise DeployError(f"{s.path} would be {s.board_path}, inside the device's state"
                              f" ({', '.join(STATE_DIRS)}): deploy never writes there; move it")
        if s.board_path in seen:
            raise DeployError(f"{s.path} and {seen[s.board_path]} would both be {s.board_path} on the board")
        seen[s.board_path] = s.path
    return sources
