"""`python -m bench [--only heap,drain,connect,deploy,size,web,wear,update] [--quick] [--out DIR]`: run
the benchmarks, print a table, write results.json (default bench/results.json). With --only,
the sections not run are kept from the results.json already there, and `updated` says which
sections a later run replaced, when, at which commit."""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import common
from bench.table import table

NAMES = ("size", "heap", "connect", "deploy", "drain", "web", "wear", "update")


def machine():
    """What ran the benchmarks: CPU, cores, OS, interpreters."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mp = subprocess.run([common.micropython(), "-c", "import sys;print(sys.version)"],
                        capture_output=True, text=True, timeout=30).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "os": platform.platform(),
            "python": platform.python_version(), "micropython": mp}


def source_state():
    """The commit measured, and whether firmware/ had uncommitted edits (they are measured too)."""
    def git(*args):
        done = subprocess.run(["git"] + list(args), cwd=common.ROOT, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else None
    dirty = git("status", "--porcelain", "--", "firmware")
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "firmware_uncommitted_changes": None if dirty is None else bool(dirty)}


def _modules():
    from bench import connect, deploy, drain, heap, size, update, wear, web
    return {"size": size, "heap": heap, "connect": connect, "deploy": deploy, "drain": drain, "web": web,
            "wear": wear, "update": update}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--only", default=",".join(NAMES),
                   help="comma-separated benchmarks to run (default: all): " + ",".join(NAMES))
    p.add_argument("--quick", action="store_true",
                   help="small counts and coarse steps: checks the code runs, figures are rough")
    p.add_argument("--out", default=str(common.BENCH_DIR),
                   help="folder for results.json (default: bench/)")
    p.add_argument("--workdir", default=None, help="keep logs and scratch files here (default: a temp folder)")
    args = p.parse_args(argv)
    only = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in only if n not in NAMES]
    if unknown:
        print("error: unknown benchmark %s; choose from %s" % (", ".join(unknown), ",".join(NAMES)),
              file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": machine(), "source": source_state(), "quick": args.quick,
               "command": "python -m bench" + (" --quick" if args.quick else "")
               + ("" if set(only) == set(NAMES) else " --only " + ",".join(only))}
    modules = _modules()
    failed = []
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as tmp:
        work = Path(args.workdir or tmp)
        for name in NAMES:
            if name not in only:
                continue
            t0 = time.monotonic()
            try:
                if name == "size":
                    results[name] = modules[name].run(quick=args.quick)
                else:
                    results[name] = modules[name].run(work / name, quick=args.quick)
            except Exception as e:  # one benchmark failing must not lose the others' figures
                failed.append(name)
                text = str(e).strip().splitlines()
                results[name] = {"error": "%s: %s" % (type(e).__name__, text[0] if text else "")}
                print("error: %s failed: %s" % (name, results[name]["error"]), file=sys.stderr)
            results[name]["bench_seconds"] = round(time.monotonic() - t0, 1)
    path = out_dir / "results.json"
    results = _merged(path, results, only)
    tmp_path = path.with_suffix(".tmp")
    tmp_path.write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")
    tmp_path.replace(path)
    print()
    print(table(results))
    print("\nwrote %s" % path)
    return 1 if failed else 0


def _merged(path, results, only):
    """results, or with --only a subset: the results.json at path with those sections replaced
    (the full run's date, machine and commit stay on top; `updated` lists the later runs)."""
    if set(only) == set(NAMES) or not path.exists():
        return results
    try:
        old = json.loads(path.read_text())
    except ValueError:
        return results
    if old.get("quick") != results["quick"]:
        return results  # never mix quick figures with full ones
    for name in only:
        old[name] = results[name]
    old.setdefault("updated", []).append({key: results[key] for key in ("date", "source", "command")})
    return old


if __name__ == "__main__":
    sys.exit(main())
