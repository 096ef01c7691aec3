"""Deploy-time trimming of MiniMQTT for MicroPython's heap.

A MicroPython board loads each .mpy into its heap whole, so code the firmware never runs still
costs RAM: on a plain ESP32 that is the difference between fitting in 64 KiB or not. Before
compiling MiniMQTT for a MicroPython board, deploy takes out
  - its logging calls: with no logger set they do nothing, but their bytecode and format
    strings take about 4 KB of heap;
  - the methods listed in UNUSED, which the firmware never calls (about 3 KB);
  - names that only cost interned strings (qstrs), which stay in the heap for good: its integer
    constants become private (`_MQTT_PUBLISH = const(...)`), which mpy-cross folds into the
    code instead of keeping as globals; the typing imports (annotations are not evaluated on
    MicroPython); `__repo__` and globals nothing reads; the do-nothing logger once no logging
    call is left; the attributes in UNREAD, which nothing left reads (also a slot in the
    instance's dict). The heap grows its table of interned strings by doubling: before this
    the firmware sat one name under the step from 620 to 1260 entries, one block of about
    7 KiB on the 64-bit unix port (bench/heap.py reports the room left).
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
# logging switches, a size property, use as a context manager; publish and subscribe with
# their topic checks (the client writes each PUBLISH and its SUBSCRIBE whole, as one TLS
# record each) and username_pw_set (azure_edge/mqtt.py sets it).
UNUSED = ("will_set", "add_topic_callback", "remove_topic_callback", "unsubscribe", "connect",
          "reconnect", "_recompute_reconnect_backoff", "_reset_reconnect_backoff",
          "enable_logger", "disable_logger", "mqtt_msg", "__enter__", "__exit__", "deinit",
          "publish", "subscribe", "_valid_topic", "_valid_qos", "username_pw_set")
# Attributes MiniMQTT's __init__ sets that nothing left reads once UNUSED is out: each is a
# slot in every MQTT instance's dict and an interned name. Only those really unread are cut.
UNREAD = ("_msg_size_lim", "_reconnect_attempts_max", "_reconnect_maximum_backoff", "on_publish",
          "on_unsubscribe", "session_id")
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


def slim_source(text, name="adafruit_minimqtt.py", keep=()):
    """MiniMQTT's source with logging calls and UNUSED methods (less those in `keep` and what
    they call) blanked out, line numbers kept."""
    tree = ast.parse(text)
    unused = _without(tree, keep)
    source = text.splitlines()
    lines = text.splitlines(keepends=True)
    cuts = []  # (first line, last line, keep a pass) 1-based, inclusive
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name in unused:
                    first = min([d.lineno for d in item.decorator_list] + [item.lineno])
                    cuts.append((first, item.end_lineno, False))
                    found.add(item.name)
        elif isinstance(node, ast.Expr) and _is_log_call(node.value) and _whole_lines(node, lines):
            cuts.append((node.lineno, node.end_lineno, True))
    missing = set(unused) - found
    if missing:
        raise SlimError(f"{name} has no method {', '.join(sorted(missing))}: update UNUSED in"
                        " host_tools/edgekit/slim.py for this MiniMQTT version")
    for first, last, keep in sorted(cuts, key=lambda c: not c[2]):  # removed methods last
        for i in range(first - 1, last):
            lines[i] = "\n"
        if keep:
            line = source[first - 1]
            lines[first - 1] = line[:len(line) - len(line.lstrip())] + "pass\n"
    out = _drop_names("".join(lines))
    _check(out, name, unused)
    return out


def _without(tree, keep):
    # UNUSED less `keep` and what the kept methods call (publish needs the topic checks).
    methods = {f.name: f for c in ast.walk(tree) if isinstance(c, ast.ClassDef)
               for f in c.body if isinstance(f, ast.FunctionDef)}
    kept, todo = set(), list(keep)
    while todo:
        name = todo.pop()
        if name in kept or name not in methods:
            continue
        kept.add(name)
        todo += [n.attr for n in ast.walk(methods[name]) if isinstance(n, ast.Attribute)]
    return tuple(n for n in UNUSED if n not in kept)


def _drop_names(text):
    # The second pass, on the already trimmed source: line numbers stay as they are.
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    cuts = []
    consts = set()
    loaded = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    loaded |= {name for n in ast.walk(tree) if isinstance(n, ast.Global) for name in n.names}
    for node in tree.body:
        if _is_typing_import(node):
            cuts.append((node.lineno, node.end_lineno))
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            target = node.targets[0].id
            # A module global nothing reads (MiniMQTT keeps two from an older socket API).
            unread = target.startswith("_") and not target.startswith("__") and target not in loaded
            if target == "__repo__" or unread:
                cuts.append((node.lineno, node.end_lineno))
            elif not target.startswith("_") and _is_int_const(node.value):
                consts.add(target)
    loggers = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "logger"]
    null = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "NullLogger"]
    sets = [n for n in ast.walk(tree) if isinstance(n, ast.Assign) and len(n.targets) == 1
            and isinstance(n.targets[0], ast.Attribute) and n.targets[0].attr == "logger"]
    if null and len(loggers) == len(sets) == 1:
        # The logger is only ever set: with no logging calls left, neither it nor its class is needed.
        cuts += [(sets[0].lineno, sets[0].end_lineno), (null[0].lineno, null[0].end_lineno)]
    read = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Load)}
    for node in ast.walk(tree):
        target = getattr(node, "target", None) or (getattr(node, "targets", None) or [None])[0]
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(target, ast.Attribute) \
                and isinstance(target.value, ast.Name) and target.value.id == "self" \
                and target.attr in UNREAD and target.attr not in read:
            cuts.append((node.lineno, node.end_lineno))
    names = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id in consts]
    for n in sorted(names, key=lambda n: (n.lineno, -n.col_offset)):  # right to left in a line
        raw = lines[n.lineno - 1].encode()  # ast's offsets count UTF-8 bytes
        lines[n.lineno - 1] = (raw[:n.col_offset] + b"_" + raw[n.col_offset:]).decode()
    for first, last in cuts:
        for i in range(first - 1, last):
            lines[i] = "\n"
    return "".join(lines)


def _is_typing_import(node):
    # try: from typing import ... / except ImportError: pass
    return (isinstance(node, ast.Try) and all(isinstance(b, ast.ImportFrom) and b.module in ("typing", "types")
                                              for b in node.body)
            and len(node.handlers) == 1 and all(isinstance(b, ast.Pass) for b in node.handlers[0].body)
            and not node.orelse and not node.finalbody)


def _is_int_const(value):
    return (isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "const"
            and len(value.args) == 1 and isinstance(value.args[0], ast.Constant)
            and isinstance(value.args[0].value, int))


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


def _check(slimmed, name, unused):
    # Nothing left in the library may reach a removed method.
    for node in ast.walk(ast.parse(slimmed)):
        if isinstance(node, ast.Attribute) and node.attr in unused:
            raise SlimError(f"{name} line {node.lineno} still uses {node.attr}, which the MicroPython"
                            " build of MiniMQTT leaves out: take it off UNUSED in host_tools/edgekit/slim.py")
