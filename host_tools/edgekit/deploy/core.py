"""`edgekit deploy` as a function: plan, build, compare with the board, copy what changed."""
import contextlib
import hashlib
import posixpath
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from edgekit import BUNDLES_DIR, FIRMWARE_DIR
from edgekit.deploy.checks import check_bundle
from edgekit.deploy.compile import build, check_board_mpy
from edgekit.deploy.link import DriveLink, ReplLink
from edgekit.deploy.manifest import ROMFS_KEY
from edgekit.deploy.plan import SLOT_SELECTION, DeployError, is_state, plan_sources
from edgekit.deploy.romfs import image_from_payloads, image_from_tree
from edgekit.errors import Interrupted
from edgekit.monitor import watch as watch_console

DEFAULT_BUNDLES_DIR = BUNDLES_DIR


@dataclass
class DeployResult:
    """What one deploy did. wire_bytes counts everything sent (commands included)."""

    target: str
    planned: int = 0
    copied: list = field(default_factory=list)
    removed: list = field(default_factory=list)
    payload_bytes: int = 0
    wire_bytes: int = 0
    compiled: int = 0
    board: dict = field(default_factory=dict)
    link: object = None
    console: tuple = None  # (outcome, line) from watching the console after the reset


def _quiet(_message):
    pass


def open_link(board, port=None, drive=None, baud=None):
    """The link a deploy uses: the drive for CircuitPython when given, else the REPL at port.

    baud: the console's speed, when not the board file's console_baud (esptool's -b).
    """
    if drive:
        if board.runtime != "circuitpython":
            raise DeployError(f"--drive is for CircuitPython boards; {board.name} runs {board.runtime}: use --port")
        return DriveLink(drive)
    if not port:
        raise DeployError(f"no port for {board.name}: give --port (usually {board.port_pattern})")
    baud = baud or board.console_baud
    try:
        return ReplLink(port, baud=baud)
    except DeployError as e:
        if baud == board.console_baud:
            raise
        raise DeployError(f"{e}; boards/{board.name}.json says its console runs at {board.console_baud}"
                          f" baud: drop -b {baud}") from None



def deploy(board, device, port=None, firmware_dir=None, bundles_dir=None, drive=None,
           verify=False, build_dir=None, reset=True, progress=None, keep_open=False, romfs=False,
           direct=False, watch=0, bar=None, main=None, baud=None):
    """Deploy the firmware and the device's bundle to a board; return a DeployResult.

    board: a edgekit.boards.Board. port: pyserial URL or device (/dev/ttyUSB0,
    socket://127.0.0.1:PORT). drive: a mounted CIRCUITPY folder (CircuitPython).
    Only files whose SHA-256 differs from the board's manifest (or, where the manifest
    has no entry or the size changed, from a hash taken on the board) are sent;
    verify=True hashes every file on the board instead of trusting the manifest.
    reset: soft-reset afterwards so main.py (code.py) starts. keep_open: leave the link
    open in result.link (the caller monitors the console, then closes it).
    romfs: put /lib in the board's ROMFS partition as one image (MicroPython firmware built
    with one), so its code runs from flash instead of the heap; only when it changed.
    direct: accept a bundle without GatewayHostName (otherwise refused, as is a bundle whose
    CA or credentials are in the other runtime's format). watch: after the reset, read the
    console for up to this many seconds: result.console = ('connected', line) once the board
    says so, else BoardVerdict quoting the board's own line (refused, cannot reach the gateway,
    or still trying). baud: the console's speed when not the board file's console_baud.
    bar: wraps the files to copy for display (a context manager yielding them, like
    click.progressbar); without it each file gets a progress line.
    Ctrl-C raises errors.Interrupted saying what the board was left with.
    main: a file shipped as the board's entry file instead of firmware/main.py (code.py).
    """
    say = progress or _quiet
    if romfs and board.runtime != "micropython":
        raise DeployError(f"--romfs is for MicroPython boards; {board.name} runs {board.runtime}")
    firmware_dir = Path(firmware_dir or FIRMWARE_DIR)
    bundles_dir = Path(bundles_dir or DEFAULT_BUNDLES_DIR)
    sources = plan_sources(board.runtime, device, firmware_dir, bundles_dir, main=main, build_dir=build_dir)
    check_bundle(board, bundles_dir / device, direct=direct)
    payloads, compiler = build(sources, board.runtime, arch=board.mpy_arch, build_dir=build_dir)
    in_rom = [p for p in payloads if romfs and p.board_path.startswith("/lib/")]
    payloads = [p for p in payloads if p not in in_rom]
    if compiler and compiler.compiled:
        say(f"compiled {compiler.compiled} file(s) with mpy-cross ({compiler.writer[2].split(';')[-1].strip()})")
    link = open_link(board, port, drive, baud)
    result = DeployResult(target=link.url, planned=len(payloads))
    state = "nothing on the board was changed; it waits in its REPL: deploy again, or press reset"
    try:
        info = link.board_info()
        result.board = info
        if info["name"] != board.runtime:
            raise DeployError(f"the board at {link.url} runs {info['name']}, but boards/{board.name}.json"
                              f" says {board.runtime}: pick the right board or flash it (edgekit flash)")
        if board.runtime == "micropython":
            check_board_mpy(info["mpy"], board.mpy_arch, payloads + in_rom, compiler.writer)
        manifest, untrusted = link.read_manifest()
        for line in untrusted:
            say(line)
        listed = set(manifest)
        on_board = link.remote_hashes([p.board_path for p in payloads], verify=verify)
        planned = {p.board_path for p in payloads}
        if in_rom:
            _deploy_romfs(link, board, in_rom, verify, result, say)
            planned.add(ROMFS_KEY)
        elif board.runtime == "micropython" and link.manifest_entry(ROMFS_KEY):
            _clear_romfs(link, say)
        changed = [p for p in payloads if on_board.get(p.board_path) != p.sha256]
        gone_from_plan = listed - planned - {ROMFS_KEY}
        # The device's state is never removed, even when an old manifest lists it: only forgotten.
        forgotten = sorted(p for p in gone_from_plan if is_state(p))
        stale, kept = _still_edgekits(link, sorted(p for p in gone_from_plan if not is_state(p)), manifest, say)
        forgotten += kept
        say(f"{link.url}: {len(payloads) - len(changed)} of {len(payloads)} file(s) up to date,"
            f" {len(changed)} to copy, {len(stale)} to remove")
        link.make_dirs({d for d in _parents(p.board_path for p in changed)})
        # No bar for nothing: "copying 0/0" reads as if something were sent.
        with bar(changed) if bar and changed else contextlib.nullcontext(changed) as files:
            for n, p in enumerate(files, 1):
                if not bar:
                    say(f"  [{n}/{len(changed)}] {p.board_path} ({p.size} bytes)")
                state = (f"{n - 1} of {len(changed)} file(s) copied, each whole (old and new files side by"
                         " side); the board waits in its REPL: deploy again to finish")
                link.write(p.board_path, p.local)
                result.copied.append(p.board_path)
                result.payload_bytes += p.size
        if stale:
            say(f"  removing {', '.join(stale)}")
            link.remove(stale)
        result.removed = stale
        if link.clear(SLOT_SELECTION):
            say("  the update installed on the board gives way: the deployed application runs")
        # The manifest gains every file now known to match, not only the copied ones.
        entries = {p.board_path: [p.sha256, p.size] for p in payloads
                   if p.board_path not in listed or p in changed}
        link.update_manifest(entries, stale + forgotten)
        state = "every file is on the board, but it was not reset: press reset (or deploy again)"
        if reset:
            link.soft_reset()
            state = "the deploy is complete and the board runs the new firmware"
            say("soft reset: the board runs main.py" if board.runtime == "micropython"
                else "reloaded: the board runs code.py")
        result.wire_bytes = link.sent
        say(f"sent {result.payload_bytes} bytes of files ({len(result.copied)} copied,"
            f" {result.wire_bytes} bytes in all)")
        if reset and watch and hasattr(link, "counter"):
            try:
                result.console = _watch(link, watch, say)
            except BoardVerdict as e:
                e.result = result  # what was deployed, for --json
                raise
    except KeyboardInterrupt:
        link.close()
        raise Interrupted(state) from None
    except BaseException:
        link.close()
        raise
    if keep_open:
        result.link = link
    else:
        link.close()
    result.compiled = compiler.compiled if compiler else 0
    return result


# `edgekit deploy --watch` exits with the board's verdict, so a script can tell these apart.
REFUSED = 3  # the board cannot start or the gateway refused it: it will not connect as it is
UNREACHABLE = 4  # the board cannot reach the gateway: it keeps retrying
STILL_TRYING = 5  # no verdict yet when the watch ended


class BoardVerdict(DeployError):
    """Deployed, but the board did not connect; exit_code says how (REFUSED, UNREACHABLE, STILL_TRYING)."""

    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code
        self.result = None  # the DeployResult of what was deployed


def _watch(link, seconds, say):
    # The firmware's first lines say whether it will work: a refusal or a bad bundle shows at once.
    outcome, line = watch_console(link.counter, seconds)
    if outcome == "connected":
        say(f"board console: {line}")
        return outcome, line
    if outcome == "failed":
        raise BoardVerdict(f"deployed, but the board says: {line}", REFUSED)
    if outcome == "ended":
        raise BoardVerdict("deployed, but main.py ended without connecting; the board is at its REPL"
                           + (f" (its last line: {line})" if line else ""), REFUSED)
    if outcome == "unreachable":
        raise BoardVerdict(f"deployed, but the board cannot reach the gateway ({seconds:g} s): {line}",
                           UNREACHABLE)
    raise BoardVerdict(f"deployed, but the board is still trying after {seconds:g} s"
                       + (f"; its last line: {line}" if line else "; it printed nothing yet")
                       + " (edgekit monitor shows its console; --watch sets the wait)", STILL_TRYING)


def _still_edgekits(link, paths, manifest, say):
    """(files to remove, files to forget) of those the manifest lists and the plan no longer has.

    The manifest records what edgekit put there, but anyone can edit it: a file is edgekit's to
    remove only while it still holds what the manifest recorded. One replaced by hand is kept.
    """
    if not paths:
        return [], []
    now, refused = link.current_hashes(paths)
    stale, forget = [], []
    for p in paths:
        if p in refused:
            say(f"refusing {p!r}, which the board's manifest lists: {refused[p]}, which leads off the"
                f" drive; the manifest is not trusted: nothing removed")
            forget.append(p)
        elif p not in now:
            forget.append(p)  # already gone
        elif now[p] != manifest[p][0]:
            say(f"kept {p}: it changed since edgekit put it there, so it is not edgekit's to remove;"
                " the manifest forgets it")
            forget.append(p)
        else:
            stale.append(p)
    return stale, forget


def _deploy_romfs(link, board, in_rom, verify, result, say):
    if link.romfs_partitions() < 1:
        raise DeployError(f"the MicroPython on {board.name} has no ROMFS partition (vfs.rom_ioctl):"
                          " flash a build with one (MICROPY_VFS_ROM and a romfs partition), or"
                          " deploy without --romfs")
    image = image_from_payloads(in_rom)
    digest = hashlib.sha256(image).hexdigest()
    entry = None if verify else link.manifest_entry(ROMFS_KEY)
    if entry and entry[0] == digest:
        say(f"ROMFS: the {len(in_rom)} /lib file(s) in the image are up to date")
        return
    say(f"ROMFS: writing {len(in_rom)} /lib file(s) as one {len(image)}-byte image")
    link.write_romfs(image)
    link.update_manifest({ROMFS_KEY: [digest, len(image)]}, [])
    result.copied.append(ROMFS_KEY)
    result.payload_bytes += len(image)


def _clear_romfs(link, say):
    # /rom/lib comes before /lib on sys.path: an image left by an earlier --romfs deploy
    # would keep running its old code over the files this deploy copies.
    if link.romfs_partitions() > 0:
        say("ROMFS: emptying the image an earlier --romfs deploy left (it would shadow /lib)")
        with tempfile.TemporaryDirectory() as empty:
            link.write_romfs(image_from_tree(empty))
    link.update_manifest({}, [ROMFS_KEY])


def _parents(paths):
    for path in paths:
        d = posixpath.dirname(path)
        while d not in ("", "/"):
            yield d
            d = posixpath.dirname(d)
