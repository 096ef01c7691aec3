"""Which serial port a board command talks to, spelled as esptool and mpremote users expect.

`-p/--port` takes a device (/dev/ttyUSB0, COM3), a pyserial URL (socket://127.0.0.1:PORT),
mpremote's shortcuts (u0 = /dev/ttyUSB0, a0 = /dev/ttyACM0, c0 = COM0) or `auto`; when it
is not given, EDGEKIT_PORT, then ESPTOOL_PORT, then `auto`. `auto` is the simulated board for
BOARD sim, else the one plugged-in port that matches the board file's port_pattern.
"""
import glob
import re

import click

ENV_VARS = ("EDGEKIT_PORT", "ESPTOOL_PORT")
AUTO = "auto"
# mpremote's own aliases (mpremote/main.py: "a", "u", "c" + port number).
SHORTCUTS = {"u": "/dev/ttyUSB", "a": "/dev/ttyACM", "c": "COM"}
_SHORTCUT = re.compile(r"^([uac])(\d+)$")


class PortError(ValueError):
    """No port could be chosen (the message says what to give instead)."""


def port_option(help_extra=""):
    """The -p/--port option every board command takes (EDGEKIT_PORT, ESPTOOL_PORT honoured)."""
    return click.option("-p", "--port", envvar=list(ENV_VARS), default=None, metavar="PORT",
                        help="serial port: /dev/ttyUSB0, COM3, u0/a0/c0 (mpremote's shortcuts), a URL"
                             " (socket://127.0.0.1:PORT) or auto [env EDGEKIT_PORT, ESPTOOL_PORT;"
                             " default: auto]" + help_extra)


def baud_option():
    """The -b/--baud option of the commands that open the board's console, as esptool spells it."""
    return click.option("-b", "--baud", type=click.IntRange(300, 5_000_000), default=None, metavar="BAUD",
                        help="the console's speed [default: the board file's console_baud, 115200 on a"
                             " USB-UART board]; native USB ports ignore it")


def expand(port):
    """mpremote's shortcuts spelled out ('u0' -> '/dev/ttyUSB0'); anything else as given."""
    m = _SHORTCUT.match(port or "")
    return SHORTCUTS[m.group(1)] + m.group(2) if m else port


def find_port(board, port=None, say=None, state_dir=None, start_sim=True):
    """The port to use for board: as given (shortcuts expanded), or found when None or 'auto'.

    For the simulated board, 'auto' starts it in the background (when start_sim) and uses its
    URL. Raises PortError when no single port fits.
    """
    say = say or (lambda _line: None)
    if port and port != AUTO:
        return expand(port)
    if board.simulated:
        if not start_sim:
            raise PortError(f"board {board.name} is simulated: give -p socket://127.0.0.1:PORT"
                            " or start it with 'edgekit sim start'")
        from edgekit.sim import service
        from edgekit.sim.supervisor import SimError

        try:
            state = service.start(state_dir)
        except SimError as e:
            raise PortError(str(e)) from None
        say(f"sim: using the simulated board at {state['url']} (flash {state['flash']})")
        return state["url"]
    matches = sorted(glob.glob(board.port_pattern))
    if len(matches) == 1:
        say(f"port: {matches[0]} (the only {board.port_pattern})")
        return matches[0]
    found = f"found {', '.join(matches)}" if matches else "none is plugged in"
    raise PortError(f"give -p PORT for {board.name} (its ports look like {board.port_pattern}; {found})")


# --- TCP ports have their own option names; the old --port spelling lives on for one release ---

def old_spelling(old, dest, **kwargs):
    """A hidden option that still accepts an old spelling (dest: its parameter name)."""
    return click.option(old, dest, hidden=True, default=None, **kwargs)


def renamed(value, old_value, old, new):
    """The value to use: old_value (with a one-line notice on stderr) when the old spelling was given."""
    if old_value is None:
        return value
    click.echo(f"notice: {old} is now {new}; the old spelling goes away in the next release", err=True)
    return old_value
