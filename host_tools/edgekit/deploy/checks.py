"""Refuse a bundle the board cannot use, before anything is copied.

A MicroPython board needs its CA (and client credentials) as DER, CircuitPython as PEM
(DESIGN.md: MicroPython/CircuitPython facts); a connection string without GatewayHostName
sends the device past the gateway, straight to the hub.
"""
import json
from pathlib import Path

from edgekit import BUNDLES_DIR
from edgekit.deploy.plan import DeployError

_FORMAT = {"micropython": "DER", "circuitpython": "PEM"}


def _format(data):
    return "PEM" if data.lstrip()[:10] == b"-----BEGIN" else "DER"


def check_bundle(board, bundle_dir, direct=False):
    """DeployError (what is wrong, what to do) unless the bundle in bundle_dir fits board.

    direct=True accepts a connection string without GatewayHostName (a device that talks to
    IoT Hub itself).
    """
    bundle_dir = Path(bundle_dir)
    device = bundle_dir.name
    # The bundle exists (it is what is wrong), so the command to remake it needs --force, and
    # --out when it lives elsewhere than bundles/: the hint must work as written.
    out = "" if bundle_dir.parent == Path(BUNDLES_DIR) else f" --out {bundle_dir.parent}"
    remake = (f"make it again: edgekit bundle {device} --board {board.name}{out} --force, with the --ca and "
              "connection string you gave it before")
    try:
        config = json.loads((bundle_dir / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise DeployError(f"{bundle_dir / 'config.json'} cannot be read ({e}); {remake}") from None
    if not isinstance(config, dict):
        raise DeployError(f"{bundle_dir / 'config.json'} is not a bundle's config (a JSON object); {remake}")
    need = _FORMAT[board.runtime]
    for key in ("ca", "cert", "key"):
        name = config.get(key)
        if not name:
            continue
        try:
            head = (bundle_dir / name).read_bytes()[:64]
        except OSError:
            raise DeployError(f"the bundle for {device} names {key} file {name}, which is missing; {remake}") from None
        got = _format(head)
        if got != need:
            other = "CircuitPython" if board.runtime == "micropython" else "MicroPython"
            raise DeployError(f"the bundle's {key} ({name}) is {got}, but {board.name} runs {board.runtime},"
                              f" which needs {need}: this is a {other} bundle; {remake}")
    fields = dict(part.split("=", 1) for part in str(config.get("connection_string", "")).split(";")
                  if "=" in part)
    if not fields.get("GatewayHostName") and not direct:
        raise DeployError(f"the connection string in the bundle for {device} has no GatewayHostName: the"
                          " board would bypass the gateway; add ;GatewayHostName=<gateway> and bundle again,"
                          " or pass --direct to connect straight to IoT Hub")
