"""Hostile files and leaks: inputs that are not certificate files, keys pasted in the wrong
place, the simulated board's flash, board files that point outside the cache, downgrading
redirects, and secrets in make's echo."""
import dataclasses
import http.server
import os
import stat
import subprocess
import sys
import threading
import urllib.request

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization

from conftest import ROOT
from device_helpers import HUB, KEY, Mosquitto, make_pki, write_bundle
from edgekit.boards import load_board
from edgekit.cli import main
from edgekit.flash import DownloadError, _NoDowngrade, fetch_release
from edgekit.sim import SimBoard

CS = f"HostName={HUB};DeviceId=dev1;SharedAccessKey={KEY};GatewayHostName=localhost"
PASTED = f"HostName={HUB};DeviceId=dev1;{KEY};GatewayHostName=localhost"  # key without its name


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def _cli(args, env=None):
    return CliRunner().invoke(main, args, env=env)


def _one_error_line(result):
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_inputs_that_are_not_files_of_sane_size_are_refused(tmp_path, pki):
    fifo = tmp_path / "fifo.pem"
    os.mkfifo(fifo)
    big = tmp_path / "big.pem"
    with open(big, "wb") as f:
        f.truncate(2 << 20)
    for bad, said in (("/dev/zero", "not a regular file"), (str(fifo), "not a regular file"),
                      (str(big), "larger than any certificate or key")):
        line = _one_error_line(_cli(["bundle", "dev1", "-c", CS, "--ca", bad, "--no-wifi",
                                     "--bundles", str(tmp_path / "b")]))
        assert said in line and bad in line
        assert said in _one_error_line(_cli(["certs", "inspect", bad]))
        assert said in _one_error_line(_cli(["check", "localhost:1", "--ca", bad]))
    assert not (tmp_path / "b").exists()


def test_a_key_pasted_without_its_name_shows_four_characters(tmp_path, pki):
    for args in (["bundle", "dev1", "-c", PASTED, "--ca", pki[0].root_cert, "--no-wifi",
                  "--bundles", str(tmp_path)],
                 ["check", "--ca", pki[0].root_cert, "--connection-string", PASTED]):
        line = _one_error_line(_cli(args))
        assert f"unknown key '{KEY[:4]}...'" in line
        assert KEY[:5] not in line


def test_make_bundle_never_echoes_the_key(tmp_path, pki):
    env = dict(os.environ, EDGEKIT_HOME=str(tmp_path))
    # -o: the venv is set up already; make must not reinstall it for this test.
    args = f"-c '{CS}' --ca {pki[0].root_cert} --no-wifi"
    out = subprocess.run(["make", "-s", "-o", ".venv/.installed", "bundle", "DEVICE=dev1", f"ARGS={args}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "bundles" / "dev1" / "config.json").is_file()
    assert KEY[:8] not in out.stdout + out.stderr
    helps = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout
    assert "EDGEKIT_CONNECTION_STRING=" in next(line for line in helps.splitlines() if line.startswith("bundle"))


def test_bundle_takes_the_key_password_from_the_environment(tmp_path, pki):
    files = pki[0].devices["dev-x509"]
    key = serialization.load_pem_private_key(open(files.key, "rb").read(), None)
    locked = tmp_path / "locked.key.pem"
    locked.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.BestAvailableEncryption(b"s3cret")))
    cs = f"HostName={HUB};DeviceId=dev-x509;x509=true;GatewayHostName=localhost"
    args = ["bundle", "dev-x509", "-c", cs, "--ca", pki[0].root_cert, "--cert", files.cert, "--key",
            str(locked), "--no-wifi", "--bundles", str(tmp_path / "b")]
    assert "is encrypted" in _one_error_line(_cli(args))
    ok = _cli(args, env={"EDGEKIT_KEY_PASSWORD": "s3cret"})
    assert ok.exit_code == 0, ok.output
    assert "s3cret" not in ok.output
    assert (tmp_path / "b" / "dev-x509" / "device.key.der").is_file()


def test_check_device_reads_connection_string_ca_and_port_from_the_bundle(tmp_path, pki):
    broker = Mosquitto(tmp_path / "mosquitto", *pki)
    broker.start()
    try:
        write_bundle(tmp_path, pki[0], broker.port, device="dev1")
        result = _cli(["check", "--device", "dev1", "--bundles", str(tmp_path / "bundles"), "--timeout", "5"])
    finally:
        broker.stop()
    assert result.exit_code == 0, result.output
    assert f"Checking localhost:{broker.port}" in result.output
    assert "MQTT" in result.output and KEY[:8] not in result.output
    line = _one_error_line(_cli(["check", "--device", "nobody", "--bundles", str(tmp_path / "bundles")]))
    assert "no readable bundle for 'nobody'" in line


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_sim_flash_is_owner_only(tmp_path):
    flash = tmp_path / "sim" / "flash"
    (flash / "old").mkdir(parents=True)
    (flash / "old" / "config.json").write_text("{}")
    os.chmod(flash / "old" / "config.json", 0o644)
    os.chmod(flash / "old", 0o755)
    board = SimBoard(flash).start()
    try:
        code = "import os\nos.mkdir('/edgekit')\nf=open('/edgekit/config.json','w')\nf.write('{}')\nf.close()"
        out = subprocess.run([sys.executable, "-m", "mpremote", "connect", board.url, "exec", code],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
    finally:
        board.stop()
    assert _mode(flash.parent) == 0o700 and _mode(flash) == 0o700
    assert _mode(flash / "edgekit") == 0o700 and _mode(flash / "edgekit" / "config.json") == 0o600
    assert _mode(flash / "old") == 0o700 and _mode(flash / "old" / "config.json") == 0o600


@pytest.mark.parametrize("name", ["/tmp/evil.bin", "../../evil.bin", "..", ".hidden.bin", "sub/x.bin"])
def test_board_file_names_outside_the_cache_are_refused(tmp_path, name):
    board = load_board("esp32-devkitc")
    bad = dataclasses.replace(board, firmware=dataclasses.replace(board.firmware, file=name))
    with pytest.raises(DownloadError, match="must be a plain file name"):
        fetch_release(bad, tmp_path / "cache", base_url="http://127.0.0.1:9/fw", sha256="0" * 64,
                      say=lambda s: None)
    assert not (tmp_path / "cache").exists()


def test_a_redirect_away_from_https_is_refused(tmp_path):
    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", "http://example.invalid/fw.bin")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    board = load_board("esp32-devkitc")
    try:
        with pytest.raises(DownloadError, match="refusing to leave https"):
            fetch_release(board, tmp_path / "cache", base_url=f"http://127.0.0.1:{server.server_address[1]}/fw",
                          sha256="0" * 64, say=lambda s: None)
    finally:
        server.shutdown()
        server.server_close()
    assert not list((tmp_path / "cache").glob("*"))
    # The vendor's https URL, redirected to plain http, the downgrade the issue found.
    req = urllib.request.Request(board.firmware.url)
    with pytest.raises(DownloadError, match="refusing to leave https"):
        _NoDowngrade().redirect_request(req, None, 302, "Found", {}, "http://micropython.org/x.bin")
    assert _NoDowngrade().redirect_request(req, None, 302, "Found", {}, "https://cdn.example/x.bin") is not None


def test_state_folders_are_git_ignored():
    for path in (".edgekit/gateway/registry.json", "bundles/dev1/config.json", ".edgekit/outbox/dev1/00000000.seg"):
        out = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, timeout=10)
        assert out.returncode == 0, f"{path} is not git-ignored"
