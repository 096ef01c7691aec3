"""The summary table `python -m bench` prints, from a results dict."""


def _kib(n):
    return "-" if n is None else "%.1f KiB" % (n / 1024)


def _x(r):
    if r is None:
        return "-"
    return "x%.2f" % r if r >= 0.1 else "x%.3f" % r


def _ok(flag):
    return "-" if flag is None else ("met" if flag else "MISSED")


def rows(results):
    """(measure, ours, baseline, ratio, goal) rows for whatever sections results holds."""
    out = []
    h = results.get("heap")
    if h and "error" not in h:
        g = h["goals"]
        out.append(("heap: min -X heapsize", _kib(h["min_heapsize_bytes"]),
                    "MiniMQTT %s, bare %s" % (_kib(h["minimqtt"]["min_heapsize_bytes"]),
                                              _kib(h["bare"]["min_heapsize_bytes"])),
                    _x(h["ratio_to_minimqtt"]), "<=64 KiB: " + _ok(g["min_heapsize_le_64KiB"])))
        out.append(("heap: code (after import)", _kib(h["code_bytes"]),
                    "MiniMQTT %s, bare %s" % (_kib(h["minimqtt"]["code_bytes"]), _kib(h["bare"]["code_bytes"])),
                    _x(h["code_ratio_to_minimqtt"]), "-"))
        if h.get("qstrs") is not None:
            out.append(("heap: interned names (qstrs)", str(h["qstrs"]),
                        "room before the next pool: %d" % h["qstr_room"], "-", "-"))
        a = h.get("adu_idle")
        if a and a.get("steady_over_agent_off_bytes") is not None:
            b = a.get("before") or {}
            out.append(("heap: update agent on, idle", "%+d B, %+d names" % (
                a["steady_over_agent_off_bytes"], a["names_over_agent_off"] or 0),
                "agent off; before %+d B, %+d names" % (b.get("steady_over_agent_off_bytes", 0),
                                                        b.get("names_over_agent_off", 0)),
                "-", "<=1 KiB: " + _ok(a["steady_over_agent_off_bytes"] <= 1024)))
        c32 = h.get("code_32bit")
        if c32:
            out.append(("heap: code, 32-bit MicroPython", _kib(c32["firmware_code_bytes"]),
                        "64-bit %s" % _kib(c32["firmware_code_bytes_64bit"]), _x(c32["ratio_to_64bit"]),
                        "(imports only)"))
        out.append(("heap: working (peak - code)", _kib(h["working_bytes"]),
                    "MiniMQTT %s" % _kib(h["minimqtt"].get("working_bytes")),
                    _x(_div(h["working_bytes"], h["minimqtt"].get("working_bytes"))),
                    "<=16 KiB: " + _ok(g["working_le_16KiB"])))
        out.append(("heap: Azure layer adds", "%+.0f%%" % (100 * h["azure_layer_adds"]), "MiniMQTT alone",
                    "-", "<=25%: " + _ok(g["layer_adds_le_25pct"])))
        r = h["romfs"]
        out.append(("heap: min, code in ROMFS", _kib(r["min_heapsize_bytes"]),
                    "MiniMQTT %s" % _kib(r["minimqtt"]["min_heapsize_bytes"]), _x(r["ratio_to_minimqtt"]),
                    "<=64 KiB: " + _ok(g["romfs_min_heapsize_le_64KiB"])))
        out.append(("heap: code / working, ROMFS", "%s / %s" % (_kib(r["code_bytes"]), _kib(r["working_bytes"])),
                    "MiniMQTT %s / %s" % (_kib(r["minimqtt"]["code_bytes"]),
                                          _kib(r["minimqtt"].get("working_bytes"))),
                    "-", "<=16 KiB: " + _ok(g["romfs_working_le_16KiB"])))
        out.append(("heap: Azure layer adds, ROMFS", "%+.0f%%" % (100 * r["azure_layer_adds"]), "MiniMQTT alone",
                    "-", "<=25%: " + _ok(g["romfs_layer_adds_le_25pct"])))
    d = results.get("drain")
    if d and "error" not in d:
        out.append(("drain: %d readings, 10 ms RTT" % d["readings"], "%.1f /s" % d["firmware"]["readings_per_s"],
                    "paho %.0f /s" % d["paho_pipelined"]["readings_per_s"], _x(d["ratio_to_paho"]),
                    ">=x0.5: " + _ok(d["ratio_to_paho"] >= 0.5)))
        out.append(("drain: vs stop-and-wait", "%.1f /s" % d["firmware"]["readings_per_s"],
                    "stop-and-wait %.1f /s" % d["stop_and_wait"]["readings_per_s"],
                    _x(d["ratio_to_stop_and_wait"]), ">=x10: " + _ok(d["ratio_to_stop_and_wait"] >= 10)))
        e = d.get("emulator")
        if e:
            out.append(("drain: through the emulator", "%.1f /s" % e["firmware"]["readings_per_s"],
                        "paho %.0f /s, stop-and-wait %.1f /s" % (e["paho_pipelined"]["readings_per_s"],
                                                                e["stop_and_wait"]["readings_per_s"]),
                        "%s; %s" % (_x(e["ratio_to_paho"]), _x(e["ratio_to_stop_and_wait"])), "(reference)"))
            if "ratio_to_mosquitto" in e:  # results.json written before issue 26 part 4 lacks it
                out.append(("drain: emulator vs mosquitto", "%.1f /s" % e["firmware"]["readings_per_s"],
                            "mosquitto %.1f /s (same run)" % d["firmware"]["readings_per_s"],
                            _x(e["ratio_to_mosquitto"]), ">=x0.8: " + _ok(e["goal_met"])))
        b = d.get("edgehub_pending")
        if b:
            out.append(("drain: edgeHub's %d pending, bound" % b["pending"], "<= %.0f /s" % b["max_readings_per_s"],
                        "%d readings in >= %.2f s" % (d["readings"], b["min_seconds"]),
                        _x(_div(d["firmware"]["readings_per_s"], b["max_readings_per_s"])),
                        "(one RTT per %d; emulator: %d per %.1f ms)"
                        % (b["pending"], b["pending"], b.get("implied_ms_per_batch", 0))))
        out.append(("drain: bare MicroPython pipelined", "%.0f /s" % d["bare_pipelined"]["readings_per_s"],
                    "paho %.0f /s" % d["paho_pipelined"]["readings_per_s"],
                    _x(_div(d["bare_pipelined"]["readings_per_s"], d["paho_pipelined"]["readings_per_s"])),
                    "(reference)"))
    w = results.get("web")
    if w and "error" not in w and "skipped" not in w:
        out.append(("web: drain with the page open", "%.1f /s" % w["page_readings_per_s"],
                    "no page %.1f /s" % w["no_page_readings_per_s"], _x(w["ratio_page_to_no_page"]),
                    ">=x0.9: " + _ok(w["goal_met"])))
    c = results.get("connect")
    if c and "error" not in c:
        for name, case in c["cases"].items():
            out.append(("connect: %s (median of %d)" % (name.replace("_", " "), c["connects"]),
                        "%.1f ms" % case["full_connect_ms"], "bare TLS %.1f ms" % case["bare_handshake_ms"],
                        _x(case["ratio"]), "<=x1.5: " + _ok(case["goal_met"])))
        tls = c.get("emulator_tls", {})
        for name, case in c.get("emulator_cases", {}).items():
            algo = name.split("_")[0]
            leaf = tls.get(algo, {}).get("server_leaf", "?")
            if "error" in case:
                out.append(("connect: emulator %s, leaf %s" % (name.replace("_", " "), leaf), "FAILED",
                            case["error"][-60:], "-", "-"))
                continue
            out.append(("connect: emulator %s, leaf %s" % (name.replace("_", " "), leaf),
                        "%.1f ms" % case["full_connect_ms"], "bare TLS %.1f ms" % case["bare_handshake_ms"],
                        _x(case["ratio"]), "<=x1.5: " + _ok(case["goal_met"])))
        out.append(("connect: SAS generation", "%.3f ms" % c["sas_generate_ms"],
                    "ECC handshake %.1f ms" % c["cases"]["ecc_sas"]["bare_handshake_ms"],
                    _x(c["sas_ratio_to_ecc_handshake"]), "-"))
    p = results.get("deploy")
    if p and "error" not in p:
        ek, mp = p["edgekit"], p["mpremote_cp"]
        for case in ("first", "unchanged", "one_file"):
            base = mp.get(case)
            out.append(("deploy: %s" % case.replace("_", " "),
                        "%d B, %.2f s" % (ek[case]["bytes_sent"], ek[case]["wall_s"]),
                        "mpremote cp -r %s" % ("%d B, %.2f s" % (base["bytes_sent"], base["wall_s"]) if base else "-"),
                        _x(_div(ek[case]["bytes_sent"], base["bytes_sent"]) if base else None),
                        ("<2%% of first: %s (%.1f%%)" % (_ok(p["goal_met"]), 100 * p["unchanged_ratio_to_first"]))
                        if case == "unchanged" else "-"))
    s = results.get("size")
    if s and "error" not in s:
        out.append(("size: firmware .mpy total", "%d B" % s["total_default_bytes"],
                    "MiniMQTT %d B" % s["baseline_minimqtt_bytes"]["default"], _x(s["ratio_to_minimqtt"]), "-"))
        out.append(("size: firmware .mpy -O3", "%d B" % s["total_bytes"]["O3"],
                    "default %d B" % s["total_default_bytes"], _x(s["ratio_O3_to_default"]), "-"))
    r = results.get("wear")
    if r and "error" not in r:
        ds = r["designs"]
        out.append(("wear: erases / reading offline", "%.3f" % r["erases_per_reading"],
                    "plain synced append %.3f" % r["baseline_plain_erases_per_reading"],
                    _x(r["ratio_to_plain"]), "<=%.1f: %s" % (r["goal_erases_per_reading"], _ok(r["goal_met"]))))
        out.append(("wear: programmed B / reading", "%.0f B" % r["programmed_bytes_per_reading"],
                    "plain %.0f B" % ds["plain"]["programmed_bytes_per_reading"],
                    _x(_div(r["programmed_bytes_per_reading"], ds["plain"]["programmed_bytes_per_reading"])), "-"))
        out.append(("wear: years at 1 reading/s offline", "%.1f (hottest block) / %.1f (average)"
                    % (r["years_at_1_per_s_hottest"], r["years_at_1_per_s_average"]),
                    "hottest block %d erases in %d readings" % (r["hottest_block_erases"], r["readings"]),
                    "-", "(100,000 cycles)"))
        pt = r.get("partition")
        if pt:
            out.append(("wear: partition log erases / reading", "%.3f" % pt["erases_per_reading"],
                        "file outbox %.3f" % r["erases_per_reading"], _x(pt["ratio_to_outbox"]),
                        "<=%.1f: %s" % (r["goal_erases_per_reading"], _ok(r["goal_met"]))))
            out.append(("wear: partition log years at 1/s offline", "%.1f (hottest block, 64 KiB)"
                        % pt["years_at_1_per_s_hottest"],
                        "hottest block %d erases in %d readings; drain %d erases"
                        % (pt["hottest_block_erases"], pt["readings"], pt["drain_erases"]), "-",
                        " / ".join("%s KiB %.0f y" % kv for kv in pt["years_at_1_per_s_by_size_kib"].items())))
        for name, d in ds.items():
            if name in ("outbox", "plain", "partition"):
                continue
            out.append(("wear: design %s" % name, "%.3f erases, %.0f B" % (d["erases_per_reading"],
                                                                          d["programmed_bytes_per_reading"]),
                        "outbox %.3f erases" % r["erases_per_reading"],
                        _x(_div(d["erases_per_reading"], r["erases_per_reading"])),
                        "%.1f / %.1f years" % (d["years_hottest"], d["years_average"])))
    u = results.get("update")
    if u and "error" not in u:
        out.append(("update: %d B app, %g ms RTT (twin to slot switch)" % (u["app_bytes"], u["rtt_ms"]),
                    "%d ms, %d B" % (u["update_ms"], u["update_bytes"]),
                    "raw HTTP GET %d ms, %d B (written to flash %d ms)" % (u["raw_http_ms"], u["raw_http_bytes"],
                                                                          u["raw_http_to_flash_ms"]),
                    "%s; %s" % (_x(u["ratio_to_raw_http"]), _x(u["ratio_to_raw_http_to_flash"])),
                    "<=x%.1f: %s" % (u["goal_ratio"], _ok(u["goal_met"]))))
        out.append(("update: peak heap (min -X heapsize - without update)", _kib(u["peak_heap_bytes"]),
                    "min heapsize %s, without the update %s" % (_kib(u["min_heapsize_bytes"]),
                                                                _kib(u["base_min_heapsize_bytes"])),
                    "-", "32-bit ~%s" % _kib(u["peak_heap_bytes_32bit_est"])))
        out.append(("update: flash erases / update", "%d (%d B programmed)" % (u["erases_per_update"],
                                                                            u["programmed_bytes_per_update"]),
                    "raw GET to a file %d erases" % u["raw_http_to_flash_erases"],
                    _x(_div(u["erases_per_update"], u["raw_http_to_flash_erases"])), "-"))
        w = u.get("device")
        if w and w.get("first_min_heapsize_bytes"):
            out.append(("update: whole device, min heapsize for a deployment (1st; 2nd)",
                        "%s; %s" % (_kib(w["first_min_heapsize_bytes"]), _kib(w["second_min_heapsize_bytes"])),
                        "its own boot %s; the device idle %s (without the agent %s)" % (
                            _kib(w.get("apply_min_heapsize_bytes")), _kib(w["base_min_heapsize_bytes"]),
                            _kib(w["off_min_heapsize_bytes"])),
                        _x(_div(w["first_min_heapsize_bytes"], w["base_min_heapsize_bytes"])),
                        "32-bit ~%s" % _kib(w["first_min_heapsize_bytes_32bit_est"])))
        v = u.get("verify")
        if v and "error" not in v:
            out.append(("update: manifest verification (bench/adu.py)", "%.1f ms" % v["check_ms_64bit"],
                        "RSA-3072 pow alone %.1f ms; 32-bit WASI %s" % (
                            v["pow3072_ms_64bit"], "%.1f ms" % v["check_ms_32bit"] if v.get("check_ms_32bit")
                            else "failed"), "-", "-"))
    for name, section in results.items():
        if isinstance(section, dict) and "error" in section:
            out.append((name + ": FAILED", section["error"][:60], "-", "-", "-"))
    return out


def _div(a, b):
    return None if a is None or not b else a / b


def table(results):
    """The rows as aligned text, with the machine and date on top."""
    head = ("measure", "edgekit", "baseline (same run)", "ratio", "goal")
    body = rows(results)
    widths = [max(len(str(r[i])) for r in [head] + body) for i in range(5)]
    line = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    m = results.get("machine", {})
    top = "edgekit bench, %s, %s (%s cores)%s" % (results.get("date"), m.get("cpu"), m.get("cores"),
                                                  ", --quick" if results.get("quick") else "")
    return "\n".join([top, line(head), line(["-" * w for w in widths])] + [line(r) for r in body])
