"""`python -m bench --quick` end to end, so the benchmark code cannot rot.

No figure is judged here (performance never goes in a timed test): only that every benchmark
ran for real and wrote results.json with the keys the README's figures come from."""
import json
import subprocess
import sys

from conftest import ROOT


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def test_quick_bench_writes_every_figure(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out),
                           "--workdir", str(tmp_path / "work")],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["quick"] is True and results["date"] and results["machine"]["cores"] >= 1
    assert "MicroPython" in results["machine"]["micropython"]

    heap = results["heap"]
    for key in ("min_heapsize_bytes", "code_bytes", "working_bytes", "steady_bytes", "peak_bytes"):
        assert _number(heap[key]), key
    # The full device cannot fit in less than its own code, nor in less than MiniMQTT alone.
    assert heap["code_bytes"] < heap["min_heapsize_bytes"]
    assert heap["bare"]["min_heapsize_bytes"] < heap["minimqtt"]["min_heapsize_bytes"] <= heap["min_heapsize_bytes"]
    assert heap["bare"]["code_bytes"] < heap["minimqtt"]["code_bytes"] < heap["code_bytes"]
    assert heap["min_heapsize_bytes"] % heap["resolution_bytes"] == 0
    # The interned names, read off the device's own qstr_info() line.
    assert heap["qstrs"] > 100 and heap["qstrs"] + heap["qstr_room"] in (300, 620, 1260)
    assert isinstance(heap["romfs"]["available_in_this_build"], bool)
    # The same code imported by a 32-bit MicroPython, beside the 64-bit figure of the same run.
    idle = heap["adu_idle"]  # the update agent on, idle, beside the device without it
    assert isinstance(idle["steady_over_agent_off_bytes"], int) and idle["names_over_agent_off"] >= 0
    assert _number(idle["idle_path_bytes_64bit"]) and _number(idle["idle_path_bytes_32bit"])
    assert _number(idle["min_heapsize_bytes"]) and idle["idle_path_names"] > 0
    c32 = heap["code_32bit"]
    assert 0 < c32["firmware_code_bytes"] < c32["firmware_code_bytes_64bit"]
    assert 0 < c32["minimqtt_code_bytes"] < c32["firmware_code_bytes"]
    # Code run in place from a ROMFS image leaves its bytecode out of the heap.
    romfs = heap["romfs"]
    assert romfs["measured"] is True and _number(romfs["image_bytes"])
    assert romfs["code_bytes"] < heap["code_bytes"]
    assert romfs["minimqtt"]["code_bytes"] < heap["minimqtt"]["code_bytes"]
    assert _number(romfs["min_heapsize_bytes"]) and isinstance(heap["goals"]["romfs_min_heapsize_le_64KiB"], bool)

    drain = results["drain"]
    for name in ("firmware", "paho_pipelined", "stop_and_wait", "bare_pipelined"):
        assert _number(drain[name]["readings_per_s"]), name
    assert drain["firmware"]["sent"] == drain["readings"]
    assert _number(drain["ratio_to_paho"]) and _number(drain["ratio_to_stop_and_wait"])
    # The same drains through `gateway serve`, and edgeHub's bound of 100 pending beside them.
    emulated = drain["emulator"]
    for name in ("firmware", "paho_pipelined", "stop_and_wait", "bare_pipelined"):
        assert _number(emulated[name]["readings_per_s"]), name
    assert emulated["firmware"]["sent"] == drain["readings"] and drain["window"] == 128
    # Issue 26 part 4's figure: the drain through the emulator as a share of mosquitto's, same run.
    assert _number(emulated["ratio_to_mosquitto"]) and isinstance(emulated["goal_met"], bool)
    bound = drain["edgehub_pending"]
    assert bound["pending"] == 100 and _number(bound["max_readings_per_s"]) and _number(bound["min_seconds"])

    connect = results["connect"]
    assert set(connect["cases"]) == {"ecc_sas", "ecc_x509", "rsa_sas", "rsa_x509"}
    for case in connect["cases"].values():
        assert len(case["full_us"]) == connect["connects"] == len(case["bare_us"])
        assert _number(case["full_connect_ms"]) and _number(case["bare_handshake_ms"])
    assert _number(connect["sas_generate_ms"])
    assert set(connect["emulator_cases"]) == {"ecc_sas", "ecc_x509", "rsa_sas", "rsa_x509"}
    for name, case in connect["emulator_cases"].items():
        # An X.509 case the gateway refuses is a finding the table shows as FAILED, with the reason.
        if name.endswith("_x509") and "error" in case:
            assert "x509 run failed" in case["error"], case
            continue
        assert _number(case.get("full_connect_ms")) and _number(case.get("bare_handshake_ms")), (name, case)
    assert {p["server_leaf"] for p in connect["emulator_tls"].values()} <= {"RSA-2048", "EC secp256r1"}

    deploy = results["deploy"]
    first, unchanged = deploy["edgekit"]["first"], deploy["edgekit"]["unchanged"]
    assert first["files_copied"] == deploy["files"] and first["payload_bytes"] == deploy["tree_bytes"]
    # One firmware file changed: that file, and the build id (/lib/azure_edge/build.py) it changes.
    assert unchanged["files_copied"] == 0 and deploy["edgekit"]["one_file"]["files_copied"] == 2
    assert deploy["mpremote_cp"]["first"]["bytes_sent"] >= deploy["tree_bytes"]

    size = results["size"]
    assert "azure_edge/client.py" in size["modules"]
    assert size["total_default_bytes"] == sum(m["default_bytes"] for m in size["modules"].values())
    assert size["total_bytes"]["O3"] <= size["total_default_bytes"]

    wear = results["wear"]
    for key in ("erases_per_reading", "programmed_bytes_per_reading", "hottest_block_erases",
                "years_at_1_per_s_hottest", "years_at_1_per_s_average", "ratio_to_plain"):
        assert _number(wear[key]), key
    assert {"outbox", "plain", "partlog"} <= set(wear["designs"]) and isinstance(wear["goal_met"], bool)

    update = results["update"]
    for key in ("update_ms", "raw_http_ms", "raw_http_to_flash_ms", "update_bytes", "raw_http_bytes",
                "ratio_to_raw_http", "erases_per_update", "min_heapsize_bytes", "base_min_heapsize_bytes",
                "peak_heap_bytes", "code_bytes_32bit", "peak_heap_bytes_32bit_est"):
        assert _number(update[key]), key
    # The whole application crossed the link both times, and the agent installed and switched.
    assert update["raw_http_bytes"] > update["app_bytes"] >= 60 * 1024 and update["update_bytes"] > update["app_bytes"]
    assert all(r["reboot"] and r["phase"] == "trial" for r in update["runs"]["update"])
    assert update["peak_heap_bytes"] == update["min_heapsize_bytes"] - update["base_min_heapsize_bytes"]
    assert update["code_bytes_32bit"] < update["code_bytes_64bit"] and isinstance(update["goal_met"], bool)

    # The table names every section it measured.
    for word in ("heap:", "drain:", "connect:", "deploy:", "size:", "wear:", "update:"):
        assert word in done.stdout


def test_the_table_judges_the_drain_through_the_emulator_against_mosquittos():
    # Issue 26 part 4: the emulator's drain is judged against mosquitto's of the same run (>= x0.8).
    from bench.table import rows

    def rate(n):
        return {"readings_per_s": n, "seconds": 1000 / n}
    drain = {"readings": 1000, "firmware": rate(1000.0), "paho_pipelined": rate(1000.0),
             "stop_and_wait": rate(80.0), "bare_pipelined": rate(1200.0), "ratio_to_paho": 1.0,
             "ratio_to_stop_and_wait": 12.5}
    for emulator_rate, verdict in ((790.0, "MISSED"), (800.0, "met")):
        ratio = emulator_rate / 1000
        drain["emulator"] = {"firmware": rate(emulator_rate), "paho_pipelined": rate(1000.0),
                             "stop_and_wait": rate(60.0), "ratio_to_paho": ratio, "ratio_to_stop_and_wait": 13.0,
                             "ratio_to_mosquitto": ratio, "goal_met": ratio >= 0.8}
        [row] = [r for r in rows({"drain": drain}) if r[0] == "drain: emulator vs mosquitto"]
        assert row[2] == "mosquitto 1000.0 /s (same run)" and row[3] == "x%.2f" % ratio
        assert row[4] == ">=x0.8: " + verdict


def test_unknown_benchmark_is_one_line_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bench", "--only", "speed", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: unknown benchmark speed; choose from size,heap,connect,deploy,drain,web,wear,update"
    assert not (tmp_path / "results.json").exists()


def test_micropython_comes_from_edgekit_micropython(tmp_path, monkeypatch):
    # Another build of MicroPython (a 32-bit one, say) runs the same measurements.
    import pytest

    from bench import common

    other = tmp_path / "micropython-32"
    other.write_text("#!/bin/sh\n")
    monkeypatch.setenv("EDGEKIT_MICROPYTHON", str(other))
    assert common.micropython() == str(other)
    monkeypatch.setenv("EDGEKIT_MICROPYTHON", str(tmp_path / "missing"))
    with pytest.raises(common.BenchError, match="no micropython executable at .*missing: check EDGEKIT_MICROPYTHON"):
        common.micropython()
    monkeypatch.delenv("EDGEKIT_MICROPYTHON")
    assert common.micropython() == str(common.BIN / "micropython")
