"""The `edgekit deploy` and `edgekit monitor` commands: thin layers over deploy() and monitor."""
import contextlib
import json
import sys

import click

from edgekit import monitor as console
from edgekit import FIRMWARE_DIR, ports, style
from edgekit.boards import BoardError, boards_option, load_board
from edgekit.deploy.core import DEFAULT_BUNDLES_DIR, REFUSED, STILL_TRYING, UNREACHABLE, BoardVerdict, deploy
from edgekit.deploy.plan import DeployError
from edgekit.errors import Interrupted, UserError
from edgekit.sim.supervisor import SimError

DEFAULT_WATCH = 10.0  # seconds of console read after the reset: long enough for a refusal to show


def _copy_bar(changed):
    """click's progress bar over the files to copy (plain lines when output is not a terminal)."""
    return click.progressbar(changed, label="copying", show_pos=True, color=style.color(),
                             item_show_func=lambda p: p.board_path if p else "", file=sys.stdout)


# The verdict word of each exit status in deploy --json (core's REFUSED, UNREACHABLE, STILL_TRYING).
_VERDICTS = {0: "connected", REFUSED: "refused", UNREACHABLE: "unreachable", STILL_TRYING: "still_trying"}


@contextlib.contextmanager
def _stdout_to_stderr():
    # click.echo looks sys.stdout up at each call; progress bars take the file they were given.
    saved = sys.stdout
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stdout = saved


def deploy_json(board_name, device, result, error):
    """The object `deploy --json` prints: see `edgekit help json`."""
    code = getattr(error, "exit_code", 0) if error else 0
    verdict = _VERDICTS.get(code) if result is not None else None
    if result is not None and code == 0 and not result.console:
        verdict = None  # --watch 0 or a drive: nothing was read back
    return {"device": device, "board": board_name, "exit": code, "verdict": verdict,
            "target": result.target if result else None,
            "files": result.planned if result else None,
            "copied": list(result.copied) if result else [], "removed": list(result.removed) if result else [],
            "payload_bytes": result.payload_bytes if result else 0, "wire_bytes": result.wire_bytes if result else 0,
            "compiled": result.compiled if result else 0,
            "console": result.console[1] if result and result.console else None,
            "error": error.format_message() if error else None}


@click.command("deploy")
@click.argument("board_name", metavar="BOARD")
@boards_option
@click.option("--device", required=True, help="device id: its bundle is BUNDLES/DEVICE/ (edgekit bundle)")
@ports.port_option()
@ports.baud_option()
@click.option("--bundles", "bundles_dir", type=click.Path(file_okay=False), default=str(DEFAULT_BUNDLES_DIR),
              show_default=True, help="folder holding the device bundles")
@click.option("--firmware", "firmware_dir", type=click.Path(file_okay=False), default=None,
              help=f"firmware source folder [default: the firmware edgekit carries, {FIRMWARE_DIR}]")
@click.option("--drive", type=click.Path(file_okay=False), default=None,
              help="CircuitPython only: the mounted CIRCUITPY drive to copy to")
@click.option("--verify", is_flag=True, help="hash every file on the board instead of trusting its manifest")
@click.option("--romfs", is_flag=True,
              help="MicroPython firmware with a ROMFS partition: /lib as one image there, run from flash (less heap)")
@click.option("--direct", is_flag=True,
              help="accept a bundle without GatewayHostName (the board talks to IoT Hub itself)")
@click.option("--watch", "watch_seconds", type=click.FloatRange(0, 600), default=DEFAULT_WATCH, show_default=True,
              help="seconds to read the console after the reset for 'connected' or a refusal (0: do not)")
@click.option("--main", "main", type=click.Path(dir_okay=False), default=None,
              help="ship this file as the board's entry file (main.py or code.py), e.g. firmware/examples/relay.py")
@click.option("--monitor", is_flag=True, help="after the reset, show the board's console until Ctrl-C")
@click.option("--monitor-seconds", type=float, default=None, help="with --monitor: stop after this many seconds")
@click.option("--json", "as_json", is_flag=True,
              help="progress on stderr, then one JSON object on stdout: what was sent and the board's verdict "
                   "('edgekit help json')")
@click.option("--state-dir", type=click.Path(file_okay=False), default=None, hidden=True,
              help="the simulated board's state folder (default .edgekit/sim)")
def deploy_cmd(board_name, device, port, baud, bundles_dir, firmware_dir, drive, verify, romfs, direct, watch_seconds,
               main, monitor, monitor_seconds, as_json, state_dir):
    """Deploy the firmware and DEVICE's bundle to BOARD, copying only what changed.

    MicroPython boards get .mpy files compiled for the board (mpy-cross) over mpremote;
    CircuitPython boards get .py sources, through --drive or the REPL. BOARD sim starts
    the simulated board when it is not running. After the reset the console is read for
    a few seconds and the exit status is the board's verdict, quoting its own line: 0 connected,
    3 refused or cannot start, 4 cannot reach the gateway, 5 still trying when the watch ended
    (1: the deploy itself failed; --watch 0 skips the verdict).
    """
    if as_json and monitor:
        raise UserError("--json prints one object when the deploy ends; --monitor never ends it: drop one")
    options = dict(port=port, baud=baud, bundles_dir=bundles_dir, firmware_dir=firmware_dir, drive=drive,
                   verify=verify, romfs=romfs, direct=direct, watch_seconds=watch_seconds, main=main,
                   monitor=monitor, state_dir=state_dir)
    if as_json:
        try:
            # The same deploy, its lines on stderr; the one object on stdout whatever the outcome.
            with _stdout_to_stderr():
                result = _deploy(board_name, device, **options)
        except UserError as e:
            click.echo(json.dumps(deploy_json(board_name, device, getattr(e, "result", None), e)))
            raise SystemExit(e.exit_code) from None
        click.echo(json.dumps(deploy_json(board_name, device, result, None)))
        return
    result = _deploy(board_name, device, **options)
    if monitor:
        click.echo(f"--- console of {result.link.url} (Ctrl-C ends) ---")
        try:
            result.link.monitor(sys.stdout.buffer, seconds=monitor_seconds)
        finally:
            result.link.close()


def _deploy(board_name, device, port, baud, bundles_dir, firmware_dir, drive, verify, romfs, direct, watch_seconds,
            main, monitor, state_dir):
    """deploy() with its progress on stdout; every failure a UserError (a BoardVerdict's carries .result)."""
    try:
        board = load_board(board_name)
        if monitor and drive:
            raise DeployError("--monitor needs the board's serial port (give --port, not --drive)")
        if not drive:
            port = ports.find_port(board, port, say=click.echo, state_dir=state_dir)
        result = deploy(board, device, port=port, drive=drive, firmware_dir=firmware_dir,
                        bundles_dir=bundles_dir, verify=verify, progress=click.echo, keep_open=monitor,
                        romfs=romfs, direct=direct, watch=0 if monitor else watch_seconds, bar=_copy_bar,
                        main=main, baud=baud)
    except BoardVerdict as e:
        verdict = UserError(str(e))
        verdict.exit_code = e.exit_code
        verdict.result = e.result
        raise verdict from None
    except (BoardError, DeployError, SimError, ports.PortError) as e:
        raise UserError(str(e)) from None
    if result.console and result.console[0] == "connected":
        style.echo(f"deployed to {result.target}: the board is connected", fg="green")
    return result


@click.command("monitor")
@click.argument("board_name", metavar="BOARD")
@boards_option
@ports.port_option()
@ports.baud_option()
@click.option("--seconds", type=click.FloatRange(min=0), default=None,
              help="leave after this many seconds [default: only on Ctrl-]]")
@click.option("--state-dir", type=click.Path(file_okay=False), default=None, hidden=True,
              help="the simulated board's state folder (default .edgekit/sim)")
def monitor_cmd(board_name, port, baud, seconds, state_dir):
    """Show BOARD's console and send it what you type; Ctrl-] leaves.

    Keys go to the board as typed (Ctrl-C interrupts the program on the board, Ctrl-D
    soft-resets it). The board keeps running when the monitor leaves.
    """
    try:
        board = load_board(board_name)
        url = ports.find_port(board, port, say=click.echo, state_dir=state_dir)
        baud = baud or board.console_baud
        serial = console.open_console(url, baud)
    except (BoardError, SimError, ports.PortError, console.ConsoleError) as e:
        raise UserError(str(e)) from None
    click.echo(f"--- console of {url} at {baud} baud (Ctrl-] leaves) ---", err=True)

    def garbage(count):
        style.echo(f"\n--- the board's first {count} bytes are not text: {baud} baud is not its console's"
                   f" speed? (boards/{board.name}.json says {board.console_baud}; -b sets it) ---",
                   fg="yellow", err=True)

    try:
        console.monitor(serial, seconds=seconds, garbage=garbage)
    except KeyboardInterrupt:
        raise Interrupted(f"left the console of {url}; the board keeps running") from None
    finally:
        serial.close()
    click.echo(f"\n--- left the console of {url}; the board keeps running ---", err=True)
