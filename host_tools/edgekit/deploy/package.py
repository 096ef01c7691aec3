"""firmware/package.json: the library as an `mpremote mip install` package.

`mpremote mip install github:<owner>/<repo>/firmware/package.json` installs azure_edge,
the firmware's lib/ shims and the MQTT client (as .py, into /lib). The file is made
from the firmware tree; `python -m edgekit.deploy.package` rewrites it, and a test
checks it is current.
"""
import json
import sys
from importlib import metadata
from pathlib import Path

from edgekit import FIRMWARE_DIR, __version__
from edgekit.deploy.plan import mqtt_sources

# Where mip fetches the MQTT files: the upstream repositories, at the released tag
# of the version installed here (the one the tests ran against).
_UPSTREAM = {
    "adafruit_minimqtt": ("adafruit-circuitpython-minimqtt", "Adafruit_CircuitPython_MiniMQTT"),
    "adafruit_connection_manager": ("adafruit-circuitpython-connectionmanager",
                                    "Adafruit_CircuitPython_ConnectionManager"),
    "adafruit_ticks": ("adafruit-circuitpython-ticks", "Adafruit_CircuitPython_Ticks"),
}


def _mqtt_urls():
    urls = []
    for target, path in mqtt_sources():
        module = target.split("/")[0].removesuffix(".py")
        dist, repo = _UPSTREAM[module]
        tag = metadata.version(dist)
        urls.append([target, f"https://raw.githubusercontent.com/adafruit/{repo}/{tag}/{target}"])
    return urls


def _minimqtt_range():
    # The range pyproject.toml states (azure_edge/mqtt.py is tested on its ends), told to mip users.
    for req in metadata.requires("edgekit") or []:
        if req.startswith("adafruit-circuitpython-minimqtt"):
            return req.split(";")[0][len("adafruit-circuitpython-minimqtt"):].strip()
    return None


def package_json(firmware_dir=None, include_mqtt=True):
    """The package.json dict for the firmware tree (paths relative to firmware_dir)."""
    firmware_dir = Path(firmware_dir or FIRMWARE_DIR)
    urls = []
    for path in sorted((firmware_dir / "azure_edge").rglob("*.py")):
        rel = path.relative_to(firmware_dir).as_posix()
        urls.append([rel, rel])
    lib = firmware_dir / "lib"
    for path in sorted(lib.rglob("*.py")) if lib.is_dir() else []:
        urls.append([path.relative_to(lib).as_posix(), path.relative_to(firmware_dir).as_posix()])
    if include_mqtt:
        urls += _mqtt_urls()
    return {"urls": urls, "deps": [], "version": __version__, "minimqtt": _minimqtt_range()}


def render(data):
    """package.json text, one [target, url] pair a line, stable so the committed file can be compared."""
    pairs = ",\n".join(f"    {json.dumps(pair)}" for pair in data["urls"])
    return (f'{{\n  "urls": [\n{pairs}\n  ],\n  "deps": {json.dumps(data["deps"])},\n'
            f'  "version": {json.dumps(data["version"])},\n'
            f'  "minimqtt": {json.dumps(data.get("minimqtt"))}\n}}\n')


def main(argv=None):
    """Rewrite firmware/package.json (or the file given) from the firmware tree."""
    out = Path(argv[0]) if argv else FIRMWARE_DIR / "package.json"
    out.write_text(render(package_json(out.parent)))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
