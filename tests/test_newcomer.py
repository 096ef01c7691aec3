"""What a new user meets first: typos get a suggestion, every error is one line, exit statuses
scripts can rely on, JSON where scripts read, and help that needs no web page (issue 27).

CliRunner and function calls throughout; one real gateway subprocess for the hub-side commands.
"""
import base64
import json
import re
import shlex
import socket
import threading

import pytest
from click.testing import CliRunner

from gateway_helpers import MqttDevice, gateway  # noqa: F401  (gateway is a fixture)
from test_cli_conventions import make_firmware
from test_deploy import make_bundle
from edgekit import BOARDS_DIR, check
from edgekit.boards import BoardError, list_boards, load_board
from edgekit.certs.demo import make_demo_pki
from edgekit.cli import main
from edgekit.deploy import DeployError
from edgekit.deploy.checks import check_bundle
from edgekit.deploy.link import ReplLink
from edgekit.gateway import DEFAULT_HUB, registry
from edgekit.help import TOPICS
from azure_edge import topics  # noqa: E402  (conftest puts firmware/ on sys.path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_demo_pki(tmp_path_factory.mktemp("pki") / "pki", "localhost", devices=("dev1",))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*args, env=None):
    result = CliRunner().invoke(main, list(args), env=env, prog_name="edgekit")
    assert "Traceback" not in result.output, result.output
    return result


def one_line(result, code, *fragments):
    """The output is exactly one `error:` line holding every fragment, and the exit status is code."""
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == code and len(lines) == 1 and lines[0].startswith("error: "), result.output
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


# --- typos get help ----------------------------------------------------------------------------

def test_a_mistyped_device_id_gets_did_you_mean_in_every_hub_command(gateway):
    gateway.add_device("sensor1")
    data = str(gateway.data)
    for args in (["invoke-method", "sensr1", "ping"], ["twin", "sensr1"], ["send-c2d", "sensr1", "hi"],
                 ["update-twin", "sensr1", "{}"], ["telemetry", "--device", "sensr1"],
                 ["device", "show", "sensr1"], ["device", "remove", "sensr1"]):
        one_line(run("gateway", *args, "--data", data), 1, "'sensr1'", "did you mean 'sensor1'?")
    # Nothing near: no made-up suggestion.
    assert "did you mean" not in one_line(run("gateway", "twin", "zzzzzzzz", "--data", data), 1, "'zzzzzzzz'")
    # Case slips count as slips.
    assert "did you mean 'sensor1'" in registry.did_you_mean(registry.load(data), "SENSOR1")


def test_telemetry_for_an_unknown_device_or_a_folder_without_a_gateway_says_so(tmp_path, gateway):
    one_line(run("gateway", "telemetry", "--data", str(tmp_path / "nothing")), 1,
             "no gateway has run in", "'edgekit gateway serve'", "--data")
    one_line(run("gateway", "telemetry", "--device", "ghost-device", "--data", str(gateway.data)), 1,
             "no identity 'ghost-device'")
    line = run("gateway", "telemetry", "--device", "nope", "--json", "--data", str(tmp_path)).output
    assert json.loads(line)["status"] == 404
    # A registered device that sent nothing yet is no error: an empty answer, exit 0.
    gateway.add_device("quiet-one")
    result = run("gateway", "telemetry", "--device", "quiet-one", "--data", str(gateway.data))
    assert (result.exit_code, result.output) == (0, "")


# --- exit statuses -----------------------------------------------------------------------------

def test_invoke_method_exits_3_when_the_device_answers_404_and_0_on_200(gateway):
    cs = gateway.add_device("method-exit")
    dev = MqttDevice.from_connection_string(gateway, cs)
    assert dev.connect() == 0 and dev.subscribe("$iothub/methods/POST/#") in (0, 1)

    def answer(status):
        topic, _ = dev.next_message(prefix="$iothub/methods/POST/")
        _, rid = topics.parse_method(topic)
        dev.publish(topics.method_response(status, rid), b'{"said": %d}' % status)

    try:
        for status, code in ((404, 3), (200, 0)):
            t = threading.Thread(target=answer, args=(status,))
            t.start()
            result = run("gateway", "invoke-method", "method-exit", "nosuch", "--timeout", "10",
                         "--data", str(gateway.data), "--json")
            t.join()
            assert result.exit_code == code, result.output
            assert json.loads(result.output) == {"status": status, "payload": {"said": status}}
    finally:
        dev.close()


def test_usage_errors_are_one_line_with_where_the_usage_is(tmp_path):
    (tmp_path / "pki").mkdir()
    one_line(run("bundel"), 2, "No such command 'bundel'", "Did you mean 'bundle'?", "'edgekit -h'")
    one_line(run("gateway", "twin"), 2, "Missing argument 'DEVICE_ID'", "'edgekit gateway twin -h' shows the usage")
    one_line(run("check", "--timeout", "soon"), 2, "'--timeout'", "'edgekit check -h'")
    # A group given nothing still shows its help, not an error.
    bare = run("gateway").output
    assert bare.startswith("Usage: edgekit gateway") and "error:" not in bare


# --- boards: any case, and a folder of the user's own ------------------------------------------

def test_board_names_match_in_any_case_and_typos_get_the_closest(monkeypatch):
    monkeypatch.delenv("EDGEKIT_HOME", raising=False)
    assert load_board("ESP32-DevKitC").name == "esp32-devkitc"
    with pytest.raises(BoardError, match="did you mean 'esp32-devkitc'") as e:
        load_board("ESP32-DevKitX")
    # The way out is a folder of the user's, not a file inside the installed package.
    assert "--boards DIR" in str(e.value) and "$EDGEKIT_HOME/boards" in str(e.value)
    assert "site-packages" not in str(e.value) and "board_files" not in str(e.value)


def test_a_users_boards_folder_is_read_beside_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGEKIT_HOME", raising=False)
    mine = tmp_path / "myboards"
    mine.mkdir()
    data = json.loads((BOARDS_DIR / "esp32-devkitc.json").read_text())
    data.update(name="my-wrover", description="my own board", led_pin=5)
    (mine / "my-wrover.json").write_text(json.dumps(data))
    listed = run("boards", "--boards", str(mine)).output
    assert "my-wrover" in listed and "esp32-devkitc" in listed
    assert "my-wrover" not in run("boards").output  # --boards is for that command only
    # $EDGEKIT_HOME/boards, read without --boards; a user's file wins over a shipped one of its name.
    (tmp_path / "boards").mkdir()
    data.update(name="sim", description="my sim")
    (tmp_path / "boards" / "sim.json").write_text(json.dumps(data))
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path))
    assert load_board("sim").description == "my sim"
    assert len([b for b in list_boards() if b.name == "sim"]) == 1
    # Every board command takes --boards.
    for command in ("deploy", "flash", "monitor", "bundle"):
        assert "--boards DIR" in run(command, "-h").output, command


# --- bundle: a certGen folder, quiet for the emulator, hints that work as written ---------------

def _emulator_cs(device):
    key = base64.b64encode(bytes(range(32))).decode()
    return f"HostName={DEFAULT_HUB};DeviceId={device};SharedAccessKey={key};GatewayHostName=localhost"


def test_bundle_takes_a_certgen_folder_and_says_one_line_for_the_emulator(tmp_path, pki):
    out = tmp_path / "bundles"
    result = run("bundle", "cp1", "-c", _emulator_cs("cp1"), "--ca", str(pki.outdir), "--no-wifi", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert (out / "cp1" / "ca.der").read_bytes()[:1] == b"\x30"  # the certGen root, as DER
    assert "az iot" not in result.output and "ufw" not in result.output and "iotedge" not in result.output
    [note] = [ln for ln in result.output.splitlines() if "nothing to do in Azure" in ln]
    assert "edgekit deploy" in note
    # Not a directory-only rule any more, but a folder without a root still gets one line.
    (tmp_path / "empty").mkdir()
    one_line(run("bundle", "cp2", "-c", _emulator_cs("cp2"), "--ca", str(tmp_path / "empty"), "--no-wifi",
                 "--out", str(out)), 1, "a folder without certGen files", "give a certificate file")


def test_the_remake_hint_of_a_refused_bundle_works_as_written(tmp_path, pki):
    out = tmp_path / "elsewhere"
    assert run("bundle", "cp1", "-c", _emulator_cs("cp1"), "--ca", str(pki.outdir), "--no-wifi",
               "--runtime", "circuitpython", "--out", str(out)).exit_code == 0
    with pytest.raises(DeployError) as e:
        check_bundle(load_board("sim"), out / "cp1")  # a PEM bundle for a MicroPython board
    hint = str(e.value).split("make it again: ", 1)[1].split(",", 1)[0]
    assert hint == f"edgekit bundle cp1 --board sim --out {out} --force"
    argv = shlex.split(hint)[1:] + ["-c", _emulator_cs("cp1"), "--ca", str(pki.outdir), "--no-wifi"]
    assert run(*argv).exit_code == 0
    check_bundle(load_board("sim"), out / "cp1")  # now it fits


# --- check: the file's name, and the ports line only when it matters ----------------------------

def test_check_names_the_ca_file_and_keeps_quiet_about_other_ports_when_8883_answers(gateway, tmp_path):
    report = check.run_check(f"localhost:{gateway.port}", gateway.ca, timeout=5)
    text = check.render_text(report)
    assert report.ok and "Ports" not in text and "5671" not in text, text
    assert "ports" in [s["name"] for s in json.loads(check.render_json(report))["steps"]]  # scripts keep it
    other = make_demo_pki(tmp_path / "other", "localhost")
    report = check.run_check(f"localhost:{gateway.port}", other.root_cert, timeout=5)
    [tls] = [s for s in report.steps if s.name == "tls"]
    assert tls.summary == f"unknown issuer: the chain does not lead to {other.root_cert}"
    assert "ROOT" not in " ".join(tls.fixes)
    closed = check.render_text(check.run_check(f"localhost:{free_port()}", gateway.ca, timeout=5))
    assert "Ports" in closed  # 8883 refused: whether other ports answer is a clue


# --- no stray bytes on stdout ------------------------------------------------------------------

def test_a_failed_raw_repl_step_prints_no_bytes_literal(capsys):
    from mpremote.transport import TransportError

    class Silent:
        def exec(self, code):
            print(b"")  # what mpremote does when the board says nothing
            raise TransportError("could not enter raw repl")

    link = ReplLink.__new__(ReplLink)
    link.transport, link._error = Silent(), TransportError
    with pytest.raises(DeployError, match="could not enter raw repl"):
        link._exec("print(1)")
    assert capsys.readouterr().out == ""


# --- --json where scripts read -----------------------------------------------------------------

def test_certs_inspect_json(pki):
    result = run("certs", "inspect", "--json", str(pki.root_cert))
    [cert] = json.loads(result.output)
    assert cert["is_ca"] and cert["self_signed"] and cert["role"] == "test-only root CA"
    assert cert["not_after"].endswith("Z") and len(cert["sha256"]) == 64
    assert set(cert) == {"path", "role", "subject", "issuer", "self_signed", "san", "eku", "key", "is_ca",
                         "path_length", "not_before", "not_after", "status", "sha1", "sha256", "warnings"}
    assert len(json.loads(run("certs", "inspect", "--json", str(pki.outdir)).output)) > 1  # a certGen folder


def test_deploy_json_and_sim_status_json_and_no_copying_line_for_nothing(tmp_path):
    fw = make_firmware(tmp_path, "print('[edgekit] connected to gw as dev-7')\n")
    bundles = make_bundle(tmp_path)
    state = tmp_path / "simstate"
    assert json.loads(run("sim", "status", "--json", "--state-dir", str(state)).output) == {"running": False}
    args = ["deploy", "sim", "--device", "dev-7", "--firmware", str(fw), "--bundles", str(bundles),
            "--state-dir", str(state), "--json"]
    try:
        first = CliRunner().invoke(main, args, prog_name="edgekit")
        assert first.exit_code == 0, first.output
        shown = json.loads(first.stdout)
        assert shown["verdict"] == "connected" and shown["exit"] == 0 and shown["error"] is None
        assert shown["copied"] and shown["payload_bytes"] > 0 and shown["files"] == len(shown["copied"])
        assert "up to date" in first.stderr  # progress is not on stdout
        status = json.loads(run("sim", "status", "--json", "--state-dir", str(state)).output)
        assert status["running"] is True and status["url"] == shown["target"]
        again = run(*args[:-1])  # unchanged: nothing to copy, so no "copying" bar
        assert again.exit_code == 0 and "0 to copy" in again.output and "copying" not in again.output
        # A refusal is an object too, with the exit status in it.
        (fw / "main.py").write_text("print('[edgekit] cannot start: no bundle')\n")
        refused = CliRunner().invoke(main, args, prog_name="edgekit")
        body = json.loads(refused.stdout)
        assert refused.exit_code == body["exit"] == 3 and body["verdict"] == "refused" and body["error"]
    finally:
        run("sim", "stop", "--state-dir", str(state))


# --- help for shells and scripts ---------------------------------------------------------------

def test_help_topics_and_commands():
    listed = run("help").output
    for name in ("exit-codes", "files", "environment", "json", "completion"):
        assert name in listed and TOPICS[name][1] in run("help", name).output
    codes = run("help", "exit-codes").output
    assert "invoke-method" in codes and "130" in codes and "usage error" in codes
    assert run("help", "gateway", "twin").output == run("gateway", "twin", "-h").output
    one_line(run("help", "exit-code"), 1, "did you mean 'exit-codes'?")
    one_line(run("help", "gateway", "twn"), 1, "did you mean 'twin'?")
    # Every --json this issue added is described where `edgekit help json` says.
    for what in ("deploy --json", "sim status --json", "certs inspect --json"):
        assert what in TOPICS["json"][1]


def test_shell_completion_as_documented():
    script = run(env={"_EDGEKIT_COMPLETE": "bash_source"}).output
    assert "_edgekit_completion" in script and "complete -o nosort -F _edgekit_completion edgekit" in script
    words = run(env={"_EDGEKIT_COMPLETE": "bash_complete", "COMP_WORDS": "edgekit gat", "COMP_CWORD": "1"})
    assert words.output.split() == ["plain,gateway"]
    words = run(env={"_EDGEKIT_COMPLETE": "bash_complete", "COMP_WORDS": "edgekit gateway serve --edgehub ",
                     "COMP_CWORD": "4"})
    assert "plain,1.6" in words.output.split()
    assert '_EDGEKIT_COMPLETE=bash_source edgekit' in TOPICS["completion"][1]


# --- the README says what a run shows --------------------------------------------------------------

def test_the_readmes_sample_deploy_is_what_the_demo_deploys_now(tmp_path):
    """The Quickstart's sample: as many files, and the same bytes within the few a fresh PKI, key and
    port change, as deploy plans for the demo's device on the simulated board."""
    from conftest import ROOT
    from edgekit import FIRMWARE_DIR, bundle as bundles, demo
    from edgekit.deploy.compile import build
    from edgekit.deploy.plan import plan_sources

    readme = (ROOT / "README.md").read_text()
    quick = readme[readme.index("## Quickstart"):readme.index("## Install")]
    files, sent = map(int, re.search(r"✓ (\d+) files, (\d+) bytes over mpremote", quick).groups())
    assert f"0 of {files} file(s) up to date, {files} to copy" in quick
    assert f"sent {sent} bytes of files ({files} copied" in quick

    pki = make_demo_pki(tmp_path / "pki", "localhost", devices=())
    cs = registry.add_device(tmp_path / "gw", demo.DEVICE, gateway_host="localhost")
    planned = bundles.plan_bundle(demo.DEVICE, cs, pki.root_cert, runtime="micropython",
                                  interval=demo.BUNDLE_INTERVAL, port=42789)
    bundles.write_bundle(planned, tmp_path / "bundles")
    sources = plan_sources("micropython", demo.DEVICE, FIRMWARE_DIR, tmp_path / "bundles", build_dir=tmp_path / "b")
    payloads, _ = build(sources, "micropython", arch=load_board("sim").mpy_arch, build_dir=tmp_path / "b")
    assert len(payloads) == files
    assert abs(sum(p.size for p in payloads) - sent) <= 16, sum(p.size for p in payloads)


def test_make_demo_does_not_build_the_sdk_venv(tmp_path):
    # The SDK's venv is for tests/test_sdk_device.py: a first `make demo` must not spend time on it.
    import os
    import subprocess
    from conftest import ROOT

    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    made = subprocess.run(["make", "-n", "-W", "pyproject.toml", "demo"], capture_output=True, text=True,
                          cwd=ROOT, timeout=30, env=env)
    assert made.returncode == 0, made.stderr
    assert ".venv/bin/edgekit demo" in made.stdout and ".venv-sdk" not in made.stdout, made.stdout


def test_deploy_help_names_the_firmware_it_uses():
    from edgekit import FIRMWARE_DIR

    text = " ".join(run("deploy", "-h").output.split())
    assert f"[default: the firmware edgekit carries, {FIRMWARE_DIR}]" in text and "repository" not in text


def test_the_environment_topic_names_every_variable_edgekit_reads():
    from conftest import ROOT

    read = set()
    for path in (ROOT / "host_tools" / "edgekit").rglob("*.py"):
        read |= set(re.findall(r"\b(EDGEKIT_[A-Z_]+)\b", path.read_text()))
    read -= {v for v in read if v.startswith("EDGEKIT_SIM_")}  # between the sim and its own child
    assert read and all(v in TOPICS["environment"][1] for v in read), read
