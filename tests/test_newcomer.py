"""What a new user meets first: typos get a suggestion, every error is one line, exit statuses
scripts can rely on, JSON where scripts read, and help that needs no web page (issue 27).

CliRunner and function calls throughout; one real gateway subprocess for the hub-side commands.
"""
import json
import threading

import pytest
from click.testing import CliRunner

from gateway_helpers import MqttDevice, gateway  # noqa: F401  (gateway is a fixture)
from edgekit.cli import main
from edgekit.gateway import registry
from azure_edge import topics  # noqa: E402  (conftest puts firmware/ on sys.path)


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
