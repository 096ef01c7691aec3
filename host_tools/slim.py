"""Deploy-time trimming of MiniMQTT for MicroPython's heap.

A MicroPython board loads each .mpy into its heap whole, so code the firmware never runs still
costs RAM: on a plain ESP32 that is the difference between fitting in 64 KiB or not. Before
compiling MiniMQTT for a MicroPython board, deploy takes out
  - its logging calls: with no logger set they do nothing, but their bytecode and format
    strings take about 4 KB of heap;
  - the methods listed in UNUSED, which the firmware never calls (about 3 KB).
Each removed statement becomes blank lines (`pass` where a block needs a statement), so line
numbers in tracebacks still match the library's source. The result is checked: if code left in
MiniMQTT still calls a removed method (a newer MiniMQTT might), the build stops with a message
instead of shipping a library that fails at run time. The firmware's own calls are checked by
the tests, which run the device on this trimmed build.
"""
import ast
import hashlib
from pathlib import Path

# MiniMQTT methods the firmware does not use: last will, per-topic callbacks, unsubscribe,
# MiniMQTT's own connect retries and reconnect (the client has its own, and calls _connect),
# logging switches, a size property, use as a context manager.
UNUSED = ("will_set", "add_topic_callback", "remove_topic_callback", "unsubscribe", "connect",
          "reconnect", "_recompute_reconnect_backoff", "_reset_reconnect_backoff",
          "enable_logger", "disable_logger", "mqtt_msg", "__enter__", "__exit__", "deinit")
# Library files this applies to (paths as in site-packages).
TARGETS = ("adafruit_minimqtt/adafruit_minimqtt.py",)
# Calls a logging statement may make in its arguments and still be dropped: pure formatting.
_PURE = ("hex", "len", "str", "repr")


def applies(path):
    """True for a library file this trimming is for (its path in site-packages)."""
    return Path(path).as_posix().endswith(TARGETS)


def fingerprint():
    """Digest of these trimming rules, for build caches keyed on the library's source."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


class SlimError(RuntimeError):
    """The library no longer matches what the trimming expects (the message says what)."""


def slim_source(text, name="adafruit_minimqtt.py"):
    """MiniMQTT's source with logging calls and UNUSED methods blanked out, line numbers kept."""
    tree = ast.parse(text)
    source = text.splitlines()
    lines = text.splitlines(keepends=True)
    cuts = []  # (first line, last line, keep a pass) 1-based, inclusive
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name in UNUSED:
                    first = min([d.lineno for d in item.decorator_list] + [item.lineno])
                    cuts.append((first, item.end_lineno, False))
                    found.add(item.name)
        elif isinstance(node, ast.Expr) and _is_log_call(node.value) and _whole_lines(node, lines):
            cuts.append((node.lineno, node.end_lineno, True))
    missing = set(UNUSED) - found
    if missing:
        raise SlimError(f"{name} has no method {', '.join(sorted(missing))}: update UNUSED in"
                        " host_tools/slim.py for this MiniMQTT version")
    for first, last, keep in sorted(cuts, key=lambda c: not c[2]):  # removed methods last
        for i in range(first - 1, last):
            lines[i] = "\n"
        if keep:
            line = source[first - 1]
            lines[first - 1] = line[:len(line) - len(line.lstrip())] + "pass\n"
    out = "".join(lines)
    _check(out, name)
    return out


def _is_log_call(call):
    # self.logger.<level>(...) whose arguments only format values.
    f = getattr(call, "func", None)
    if not (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Attribute)
            and f.value.attr == "logger"):
        return False
    for node in ast.walk(ast.Module(body=[ast.Expr(a) for a in call.args], type_ignores=[])):
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in _PURE):
            return False
    return True


def _whole_lines(node, lines):
    # Only statements that own their lines: `if x: log(...)` on one line is left alone.
    before = lines[node.lineno - 1][:node.col_offset].strip()
    after = lines[node.end_lineno - 1][node.end_col_offset:].strip()
    return before == "" and (after == "" or after.startswith("#"))


def _check(slimmed, name):
    # Nothing left in the library may reach a removed method.
    for node in ast.walk(ast.parse(slimmed)):
        if isinstance(node, ast.Attribute) and node.attr in UNUSED:
            raise SlimError(f"{name} line {node.lineno} still uses {node.attr}, which the MicroPython"
                            " build of MiniMQTT leaves out: take it off UNUSED in host_tools/slim.py")
