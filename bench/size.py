"""Code size: .mpy bytes of every firmware module, as deploy ships them and with -O3.

Baseline: MiniMQTT and its helpers, compiled the same way (the MQTT client every variant ships).
"""
import tempfile
from pathlib import Path

from edgekit import FIRMWARE_DIR
from edgekit.deploy.compile import compile_source
from edgekit.deploy.plan import DeployError, mqtt_sources

from bench.common import BenchError

# -O3 drops asserts and line numbers (tracebacks lose their line numbers).
VARIANTS = {"default": [], "O3": ["-O3"]}


def sizes(sources, flags):
    """{relative name: .mpy bytes} for (name, path) sources compiled with mpy-cross flags."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n, (name, src) in enumerate(sources):
            try:
                dst = compile_source(src, Path(tmp) / f"{n}.mpy", source_name=name, flags=flags)
            except DeployError as e:
                raise BenchError(str(e)) from None
            out[name] = dst.stat().st_size
    return out


def firmware_sources():
    pkg = FIRMWARE_DIR / "azure_edge"
    return [(f"azure_edge/{p.name}", p) for p in sorted(pkg.glob("*.py"))]


def run(quick=False, log=print):
    """Measure; return the 'size' section of results.json."""
    fw = firmware_sources()
    deps = mqtt_sources()
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
