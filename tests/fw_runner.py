# Runs firmware calls for the tests, one JSON request per line on stdin, one JSON answer
# per line on stdout. The same file runs under CPython and MicroPython, so both
# interpreters are driven through exactly the same path.
#   {"call": "sas.generate", "args": [...]}  -> {"ok": <result>} or {"error": "ValueError", "message": "..."}
#   {"exec": "<code that sets result>"}      -> the same
import gc
import json
import sys

sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else "firmware")

from azure_edge import clock, connstr, sas, topics, url  # noqa: E402

MODULES = {"clock": clock, "connstr": connstr, "sas": sas, "topics": topics, "url": url}


def plain(value):
    if isinstance(value, (bytes, bytearray)):
        return {"hex": "".join("%02x" % b for b in value)}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return dict((k, plain(value[k])) for k in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return dict((k, plain(v)) for k, v in value.__dict__.items() if not k.startswith("_"))


def handle(req):
    try:
        if "exec" in req:
            env = dict(MODULES)
            exec(req["exec"], env)
            return {"ok": plain(env.get("result"))}
        mod, name = req["call"].split(".")
        return {"ok": plain(getattr(MODULES[mod], name)(*req.get("args", [])))}
    except Exception as e:  # report every failure to pytest, which judges it
        return {"error": type(e).__name__, "message": str(e)}


while True:
    line = sys.stdin.readline()
    if not line:
        break
    gc.collect()  # each request in a heap as whole as the runner can make it
    try:
        answer = json.dumps(handle(json.loads(line)))
    except Exception as e:  # the runner's own parse or dump: said, not a dead runner
        answer = json.dumps({"error": type(e).__name__, "message": "fw_runner: %s" % e})
    line = None
    sys.stdout.write(answer + "\n")
    sys.stdout.flush()
