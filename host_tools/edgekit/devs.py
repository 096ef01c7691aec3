"""`edgekit devs`: the serial ports on this machine, their USB ids, and which board files they fit.

As `mpremote devs` lists ports, with one more column: the board files whose usb_ids match. A
USB-UART bridge (CP210x, CH340) says nothing about the chip behind it, so such a port can fit
several boards; the chip's own USB (an S2's or S3's) names its maker, and often the board.
"""
import json

import click

from edgekit.boards import boards_for_cli


def usb_id(port):
    """'vid:pid' of a pyserial ListPortInfo, lower-case hex, or None for a port that is not USB."""
    if port.vid is None or port.pid is None:
        return None
    return f"{port.vid:04x}:{port.pid:04x}"


def fits(board, found):
    """True when a port with USB id `found` could be board's console ('303a:*' takes any product)."""
    vendor = found.split(":")[0]
    return any(known == found or known == f"{vendor}:*" for known in board.usb_ids)


def describe(ports, boards):
    """One dict per port: device, usb id, serial number, maker, product and the boards it fits."""
    rows = []
    for port in sorted(ports, key=lambda p: p.device):
        found = usb_id(port)
        rows.append({
            "device": port.device,
            "usb_id": found,
            "serial_number": port.serial_number,
            "manufacturer": port.manufacturer,
            "product": port.product or (port.description if port.description != "n/a" else None),
            "boards": [b.name for b in boards if found and fits(b, found)],
        })
    return rows


def _system_ports():
    from serial.tools import list_ports

    return list_ports.comports()


@click.command("devs")
@click.option("--json", "as_json", is_flag=True, help="print the ports as one JSON list")
def devs_cmd(as_json):
    """List the serial ports, their USB ids, and which board files each looks like."""
    rows = describe(_system_ports(), boards_for_cli())
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no serial ports found: plug the board in with a data cable (a charge-only cable"
                   " shows nothing); on Linux, `dmesg -w` shows what the kernel sees", err=True)
        return
    for row in rows:
        looks = ", ".join(row["boards"]) or "no board file"
        click.echo(f"{row['device']}  {row['usb_id'] or '-'}  {row['product'] or '-'}"
                   f"  {row['manufacturer'] or '-'}  serial {row['serial_number'] or '-'}  -> {looks}")
