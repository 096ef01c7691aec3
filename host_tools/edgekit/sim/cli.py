"""`edgekit sim`: serve, start, stop and inspect the simulated board."""
import json
import os
import signal

import click

from edgekit import ports
from edgekit.errors import UserError
from edgekit.sim import service
from edgekit.sim.supervisor import CONSOLE_BAUD, DEFAULT_HEAP, SimBoard, SimError

_HEAP = click.option("--heap", default=DEFAULT_HEAP, show_default=True,
                     help="MicroPython GC heap (-X heapsize); the 64-bit unix port needs about twice an ESP32's")
_LISTEN = click.option("--listen", default=0, show_default=True, type=click.IntRange(0, 65535),
                       help="TCP port on 127.0.0.1 to serve the board on (0: a free one)")
_BAUD = click.option("--baud", default=CONSOLE_BAUD, show_default=True, type=click.IntRange(1),
                     help="the console's speed; an RFC 2217 client at another speed reads garbage, as on a UART")
_RFC2217 = click.option("--rfc2217-listen", "rfc2217_port", default=0, show_default=True,
                        type=click.IntRange(0, 65535),
                        help="TCP port on 127.0.0.1 to serve the board over RFC 2217 on (0: a free one)")
_OLD_PORT = ports.old_spelling("--port", "old_port", type=click.IntRange(0, 65535))
_STATE = click.option("--state-dir", type=click.Path(file_okay=False), default=None,
                      help=f"where the state file, flash folder and console log live [default: {service.DEFAULT_STATE_DIR}]")


_OUTBOX = click.option("--outbox-partition", "outbox_blocks", default=None, type=click.IntRange(2),
                       help="4096-byte blocks of the raw 'outbox' partition `edgekit flash` adds"
                            " [default: boards/sim.json's outbox_partition_size, 64 blocks]")
_NO_OUTBOX = click.option("--no-outbox-partition", "no_outbox", is_flag=True,
                          help="a table without it, as `edgekit flash --no-outbox-partition`"
                               " writes: the firmware keeps its outbox in files on /data")


_OTA = click.option("--ota", is_flag=True,
                    help="flashed with MicroPython's OTA variant: ota_0, ota_1 and otadata, and the bootloader's"
                         " rollback, for firmware updates (edgekit/firmware:1; docs/updates.md)")


def _outbox_blocks(outbox_blocks, no_outbox):
    if no_outbox and outbox_blocks:
        raise click.UsageError("--outbox-partition and --no-outbox-partition: give one")
    return 0 if no_outbox else outbox_blocks


def _user_error(e):
    return UserError(str(e))


@click.group("sim")
def sim_group():
    """The simulated board: real MicroPython served at socket://127.0.0.1:PORT.

    mpremote and `edgekit deploy sim` talk to it like a USB-serial board: raw REPL,
    soft reset (boot.py, then main.py), machine.reset() and a network.WLAN that
    reports connected. At rfc2217://127.0.0.1:PORT2 it is as strict as a UART board:
    a client at another speed than --baud reads garbage, and DTR/RTS reset it, or hold
    it in the ROM's download mode, as an ESP32-DevKitC's auto-reset circuit does.
    """


@sim_group.command("serve")
@_LISTEN
@_OLD_PORT
@_RFC2217
@_BAUD
@_HEAP
@click.option("--flash", type=click.Path(file_okay=False), default=None,
              help="the board's flash folder, its '/' [default: STATE_DIR/flash]")
@click.option("--log", type=click.Path(dir_okay=False), default=None,
              help="console log [default: console.log beside the flash folder]")
@_OUTBOX
@_NO_OUTBOX
@_OTA
@_STATE
def serve_cmd(listen, old_port, rfc2217_port, baud, heap, flash, log, outbox_blocks, no_outbox, ota, state_dir):
    """Serve the simulated board in the foreground until Ctrl-C."""
    from pathlib import Path

    port = ports.renamed(listen, old_port, "--port", "--listen")
    state_dir = Path(state_dir or service.DEFAULT_STATE_DIR)
    try:
        board = SimBoard(flash or state_dir / "flash", port=port, heap=heap, log=log, baud=baud,
                         rfc2217_port=rfc2217_port, outbox_blocks=_outbox_blocks(outbox_blocks, no_outbox), ota=ota)
        board.open()
    except SimError as e:
        raise _user_error(e) from None
    service.write_state(state_dir, board)
    signal.signal(signal.SIGTERM, lambda *_: board.request_stop())
    click.echo(f"sim: serving {board.url} and {board.rfc2217_url} at {board.baud} baud"
               f" (flash {board.flash}, {_outbox_said(board.outbox_blocks)},"
               f"{' OTA slots, running ' + board.running + ',' if board.ota else ''} console log {board.log_path});"
               " Ctrl-C stops it")
    try:
        board.serve()
    except KeyboardInterrupt:
        pass
    finally:
        service.clear_state(state_dir, pid=os.getpid())
    click.echo("sim: stopped")


@sim_group.command("start")
@_LISTEN
@_OLD_PORT
@_RFC2217
@_BAUD
@_HEAP
@_OUTBOX
@_NO_OUTBOX
@_OTA
@_STATE
def start_cmd(listen, old_port, rfc2217_port, baud, heap, outbox_blocks, no_outbox, ota, state_dir):
    """Start the simulated board in the background (reuse it if it already runs)."""
    port = ports.renamed(listen, old_port, "--port", "--listen")
    try:
        state = service.start(state_dir, port=port, heap=heap, baud=baud, rfc2217_port=rfc2217_port,
                              outbox_blocks=_outbox_blocks(outbox_blocks, no_outbox), ota=ota)
    except SimError as e:
        raise _user_error(e) from None
    click.echo(f"sim: running at {_where(state)} (pid {state['pid']}, flash {state['flash']})")


@sim_group.command("stop")
@_STATE
def stop_cmd(state_dir):
    """Stop the background simulated board."""
    click.echo("sim: stopped" if service.stop(state_dir) else "sim: was not running")


@sim_group.command("status")
@_STATE
@click.option("--json", "as_json", is_flag=True, help="print one JSON object: {\"running\": false} or "
                                                      "the board's state ('edgekit help json')")
def status_cmd(state_dir, as_json):
    """Say whether the background simulated board runs, and where."""
    state = service.status(state_dir)
    if as_json:
        click.echo(json.dumps({"running": True, **state} if state else {"running": False}))
        return
    if not state:
        click.echo("sim: not running")
        return
    click.echo(f"sim: running at {_where(state)} (pid {state['pid']}, flash {state['flash']}, log {state['log']})")


def _outbox_said(blocks):
    return f"outbox partition {blocks * 4} KiB" if blocks else "no outbox partition"


def _where(state):
    # State files from before RFC 2217 name only the socket URL.
    if state.get("rfc2217"):
        return f"{state['url']} and {state['rfc2217']} at {state.get('baud', CONSOLE_BAUD)} baud"
    return state["url"]
