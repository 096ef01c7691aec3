"""`edgekit update create`: an update for Device Update for IoT Hub (ADU) made from a folder.

It writes the content and an import manifest v5 in the format `az iot du update init v5` writes
(Azure/azure-iot-cli-extension azext_iot/deviceupdate/commands_update.py `manifest_init_v5`;
printed by knack's `format_json`: sorted keys, indent 2, non-ASCII as is, a final newline), so the
same folder can be imported into the real ADU (`az iot du update import`) or into the local
gateway (`edgekit gateway update import`). Schema: MicrosoftDocs/azure-docs
articles/iot-hub-device-update/import-schema.md (manifestVersion "5.0").

Two handlers, both ours (ADU passes any `vendor/name:N` handler to the agent):
  edgekit/app:1    one file, <name>-<version>.tar (POSIX ustar, uncompressed): main.py and lib/...
                   as `edgekit deploy` lays them out; one file because ADU allows 10 files per update
                   and the firmware alone has more modules than that.
  edgekit/trust:1  each root CA certificate of the folder as one DER file (MicroPython loads one DER
                   certificate per load_verify_locations call), at most 10.
  edgekit/firmware:1  one MicroPython app image (FOLDER is then the .app-bin file), written by the
                   board into its next OTA slot (edgekit/update_firmware.py checks it).
"""
import base64
import datetime
import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import click

from edgekit.errors import UserError
from edgekit.certs.pem import CertError, is_ca, load_certificates, to_der, write_atomic

HANDLERS = {"app": "edgekit/app:1", "trust": "edgekit/trust:1", "firmware": "edgekit/firmware:1"}
# import-schema.md: provider and name ^[a-zA-Z0-9.-]+$ up to 64 characters; version 2 to 4 numeric parts.
NAME = re.compile(r"[a-zA-Z0-9.-]{1,64}")
VERSION = re.compile(r"\d+(?:\.\d+){1,3}")
MAX_FILES = 10  # import-schema.md: files [0-10]
SKIP_DIRS = {"__pycache__", ".git", "examples"}


class UpdateError(ValueError):
    """Input that cannot make an update; the message says what to change."""


def _check_ids(provider, name, version, manufacturer, model):
    for what, value in (("--provider", provider), ("--name", name)):
        if not NAME.fullmatch(value or ""):
            raise UpdateError(f"{what} {value!r} must be 1 to 64 letters, digits, '.' or '-' (ADU's updateId rule)")
    if not VERSION.fullmatch(version or "") or any(int(p) > 2147483647 for p in version.split(".")):
        raise UpdateError(f"--version {version!r} must be 2 to 4 dot-separated numbers, e.g. 1.0 or 2026.12.7")
    for what, value in (("--manufacturer", manufacturer), ("--model", model)):
        # compatibility values: 1 to 64 characters (import-schema.md, compatibility object)
        if not value or len(value) > 64:
            raise UpdateError(f"{what} must be 1 to 64 characters; it must equal what the device reports")


def _app_members(folder, entry=None, example=None):
    """{archive path: source path} for the app handler: main.py plus lib/<modules>."""
    folder = Path(folder)
    if example:
        # The firmware tree: an example becomes main.py, the package goes to lib/ as deploy puts it.
        source = folder / "examples" / (example if example.endswith(".py") else example + ".py")
        if not source.is_file():
            found = sorted(p.stem for p in (folder / "examples").glob("*.py"))
            raise UpdateError(f"no example {example!r} in {folder / 'examples'}"
                              + (f"; there are: {', '.join(found)}" if found else ""))
        entry_path = source
    else:
        entry_path = folder / (entry or "main.py")
        if not entry_path.is_file():
            raise UpdateError(f"{entry_path} does not exist; give the entry file with --entry FILE "
                              "(it runs as main.py), or --example NAME for the firmware tree")
    members = {"main.py": entry_path}
    for path in sorted(folder.rglob("*.py")):
        rel = path.relative_to(folder)
        if path == entry_path or set(rel.parts[:-1]) & SKIP_DIRS or len(rel.parts) == 1 and \
                path.name in ("main.py", "code.py", "boot.py"):
            continue  # another entry file would not run from lib/ anyway
        members["lib/" + rel.as_posix()] = path
    # main.py alone is an update too: the board's slot keeps the factory's /lib on its path
    # (firmware azure_edge/slots.py), so an application may use the deployed azure_edge.
    return members


def app_archive(members):
    """The ustar archive of members, byte for byte the same for the same sources (for its hash)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for arcname in sorted(members):
            data = Path(members[arcname]).read_bytes()
            info = tarfile.TarInfo(arcname)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _trust_files(folder):
    files = {}
    for path in sorted(Path(folder).iterdir()):
        if path.suffix.lower() not in (".pem", ".crt", ".cer", ".der") or not path.is_file():
            continue
        try:
            certs = load_certificates(path)
        except CertError as e:
            raise UpdateError(str(e))
        for n, cert in enumerate(certs):
            if not is_ca(cert):
                raise UpdateError(f"{path} holds '{cert.subject.rfc4514_string()}', which is not a CA "
                                  "certificate; a trust update carries the gateway's root CAs only")
            files[f"{path.stem}{'-' + str(n) if len(certs) > 1 else ''}.der"] = to_der(cert)
    if not files:
        raise UpdateError(f"{folder} holds no certificate (.pem, .crt, .cer, .der); put the new gateway "
                          "root CA there")
    if len(files) > MAX_FILES:
        raise UpdateError(f"{folder} holds {len(files)} certificates; ADU takes at most {MAX_FILES} files per update")
    return files


def file_entry(name, data):
    """A file object as `az iot du update init v5 --file path=...` writes it."""
    return {"hashes": {"sha256": base64.b64encode(hashlib.sha256(data).digest()).decode()},
            "filename": name, "sizeInBytes": len(data)}


def import_manifest(provider, name, version, manufacturer, model, handler, files, installed_criteria=None,
                    description=None, now=None):
    """The import manifest v5 as a dict (files: {file name: bytes}).

    Key for key what manifest_init_v5 builds for `--step handler=H properties='{"installedCriteria":..}'`
    and `--file path=P` per file: an inline step listing the file names.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    manifest = {"manifestVersion": "5.0", "createdDateTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "updateId": {"name": name, "provider": provider, "version": version}}
    if description:
        manifest["description"] = description
    manifest["compatibility"] = [{"manufacturer": manufacturer, "model": model}]
    manifest["instructions"] = {"steps": [{
        "type": "inline", "handler": handler, "files": list(files),
        # installedCriteria: what the agent compares with what runs, to tell it is installed.
        "handlerProperties": {"installedCriteria": installed_criteria or version}}]}
    manifest["files"] = [file_entry(n, d) for n, d in files.items()]
    return manifest


def manifest_text(manifest):
    """The manifest as `az ... > file` leaves it (knack format_json)."""
    return json.dumps(manifest, ensure_ascii=False, indent=2, sort_keys=True, separators=(",", ": ")) + "\n"


def create(folder, out_dir, provider, name, version, manufacturer=None, model=None, handler="app",
           entry=None, example=None, installed_criteria=None, description=None, force=False, now=None,
           chip=None):
    """Write OUT/<provider>.<name>.<version>/ with the content and its .importmanifest.json; return
    (folder written, manifest path, manifest dict). For the firmware handler `folder` is the image
    file, and chip (esptool's name) the board's, which the image must be for."""
    folder = Path(folder)
    manufacturer = manufacturer or provider
    model = model or name
    _check_ids(provider, name, version, manufacturer, model)
    if handler not in HANDLERS:
        raise UpdateError(f"--handler {handler!r} is not one of {', '.join(HANDLERS)}")
    if description is not None and not 1 <= len(description) <= 512:
        raise UpdateError("--description must be 1 to 512 characters (ADU's limit)")
    if handler == "firmware":
        from edgekit.update_firmware import FirmwareImageError, check_image
        if entry or example:
            raise UpdateError("--entry and --example are for app updates; a firmware update takes an image file")
        try:
            files = {f"{name}-{version}.bin": check_image(folder, chip)}
        except FirmwareImageError as e:
            raise UpdateError(str(e)) from None
    elif not folder.is_dir():
        raise UpdateError(f"{folder} is not a folder")
    elif handler == "app":
        files = {f"{name}-{version}.tar": app_archive(_app_members(folder, entry, example))}
    else:
        if entry or example:
            raise UpdateError("--entry and --example are for app updates; a trust update takes certificates")
        files = _trust_files(folder)
    target = Path(out_dir) / f"{provider}.{name}.{version}"
    if target.exists() and not force:
        raise UpdateError(f"{target} exists; pass --force to replace it, or raise --version")
    target.mkdir(parents=True, exist_ok=True)
    for old in target.iterdir():  # --force: no file of an earlier make stays beside the new manifest
        if old.is_file():
            old.unlink()
    for fname, data in files.items():
        write_atomic(target / fname, data)
    manifest = import_manifest(provider, name, version, manufacturer, model, HANDLERS[handler], files,
                               installed_criteria, description, now)
    path = target / f"{provider}.{name}.{version}.importmanifest.json"
    write_atomic(path, manifest_text(manifest).encode())
    return target, path, manifest


def files_of(manifest_path):
    """[(file name, size)] an import manifest lists, for the command's report."""
    with open(manifest_path) as f:
        return [(e["filename"], e["sizeInBytes"]) for e in json.load(f).get("files") or []]


# --- CLI ---

@click.group("update")
def update_group():
    """Over-the-air updates with Device Update for IoT Hub: make them here, deploy them with
    `edgekit gateway update` (the local service) or the real ADU (az iot du)."""


@update_group.command("create")
@click.argument("folder", type=click.Path())
@click.option("--provider", required=True, help="updateId provider, e.g. your company (letters, digits, . -)")
@click.option("--name", required=True, help="updateId name, e.g. the device class")
@click.option("--version", "version", required=True, help="updateId version: 2 to 4 numbers, e.g. 1.2")
@click.option("--manufacturer", default=None, help="compatibility: the manufacturer the device reports "
                                                   "[default: the provider]")
@click.option("--model", default=None, help="compatibility: the model the device reports [default: the name]")
@click.option("--handler", type=click.Choice(sorted(HANDLERS)), default="app", show_default=True,
              help="app: the entry file and modules (edgekit/app:1); trust: root CA certificates (edgekit/trust:1);"
                   " firmware: FOLDER is a MicroPython app image for boards flashed with the OTA variant"
                   " (edgekit/firmware:1)")
@click.option("--board", "board_name", default=None, help="firmware: the board the image is for (its chip is checked)")
@click.option("--entry", default=None, help="the file that runs as main.py [default: main.py]")
@click.option("--example", default=None, help="FOLDER is the firmware tree: this example runs as main.py")
@click.option("--installed-criteria", default=None, help="what the agent compares to tell it is installed "
                                                         "[default: the version]")
@click.option("--description", default=None, help="a description of the update (up to 512 characters)")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="updates", show_default=True,
              help="updates go to OUT/<provider>.<name>.<version>/")
@click.option("--force", is_flag=True, help="replace an update of the same id in OUT")
def create_cmd(folder, provider, name, version, manufacturer, model, handler, board_name, entry, example,
               installed_criteria, description, out_dir, force):
    """Make an update from FOLDER: its content and an import manifest v5 (as `az iot du update init v5`)."""
    chip = None
    try:
        if board_name:
            if handler != "firmware":
                raise UpdateError("--board is for firmware updates (the image's chip is checked against it)")
            from edgekit.boards import BoardError, load_board
            from edgekit.update_firmware import board_chip
            try:
                chip = board_chip(load_board(board_name))
            except BoardError as e:
                raise UpdateError(str(e)) from None
        target, path, _ = create(folder, out_dir, provider, name, version, manufacturer, model, handler, entry,
                                 example, installed_criteria, description, force, chip=chip)
    except UpdateError as e:
        raise UserError(str(e)) from None
    for fname, size in files_of(path):
        click.echo(f"  {fname:<40} {size:8d} bytes")
    click.echo(f"import manifest {path}")
    click.echo(f"local: edgekit gateway update import {path}")
    click.echo(f"Azure: az iot du update stage -n <account> -i <instance> --manifest-path {path} "
               "--storage-account <sa> --storage-container <c> --then-import")
