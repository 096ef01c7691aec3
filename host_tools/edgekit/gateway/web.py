"""`serve --web`: a local page over the running gateway (devices, telemetry charts, twin, methods, C2D).

It runs in serve's event loop, beside the MQTT head, and reads the gateway the way the hub side
does: the registry, Gateway.status(), the twins and C2D queue in the store, and telemetry.jsonl
read from where it last stopped. Reading rather than hooking keeps the MQTT path untouched: the
page costs the device traffic one file read and one status snapshot per tick, whatever it shows.

Security is Jupyter's: loopback by default; a random token, printed once in the URL, that the page
trades for a SameSite=Strict HttpOnly cookie; every request carries it; POSTs must also carry it in
a header (no form or cross-site script can add one); an Origin or Host that is not this server is
refused (cross-site requests and DNS rebinding). Device keys leave the registry only in the answer
to a POST /api/secret (so only with the token in a header), and are never logged.
"""
import asyncio
import datetime
import json
import os
import secrets
from collections import deque

from aiohttp import web

from edgekit.certs.expiry import WARN_BEFORE
from edgekit.gateway import adu, control, registry
from edgekit.gateway import c2d as c2d_props
from edgekit.gateway.core import HubError
from edgekit.gateway.store import TELEMETRY

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "webui")
COOKIE = "edgekit_web"
HEADER = "X-Edgekit-Token"
KEEP = 200  # telemetry records kept per identity for the page (charts and table)
SHOWN_BODY = 2048  # characters of a body the page shows; the whole message stays in telemetry.jsonl
TICK = 0.5  # seconds between looks at the gateway's state
# The tab icon, inline so the page needs no file and /favicon.ico is no 404: a gateway's three links.
FAVICON = (b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3"'
           b' fill="#1f3a5f"/><circle cx="8" cy="5" r="2.2" fill="#fff"/><path d="M8 7v3M8 10l-4 3M8 10l4 3"'
           b' stroke="#fff" stroke-width="1.4" fill="none"/></svg>')
# What a browser gets without the token: a page saying what to do, not JSON.
NO_TOKEN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>edgekit gateway: token needed</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="/favicon.ico">
<style>body{font:15px/1.5 system-ui,sans-serif;margin:0;color:#1d2329;background:#f6f7f9}
main{max-width:40em;margin:10vh auto;padding:0 16px}h1{font-size:20px}code{background:#e8ebef;padding:1px 4px}</style>
</head><body><main id="no-token"><h1>This page needs its access token</h1>
<p>The web view of the edgekit gateway opens only with the address that <code>edgekit gateway serve --web</code>
(or <code>edgekit demo --web</code>) printed, the one ending in <code>?token=...</code>. Open that address again.</p>
<p>Lost it? Stop the gateway and start it again: each start prints a new one.</p></main></body></html>
"""


class WebError(ValueError):
    """The web view cannot start (port taken, bad address); the message says what to do."""


def _client_id(device, module=None):
    return device + ("/" + module if module else "")


class Watcher:
    """What the page shows, kept current by tick(): devices, recent telemetry, twins, C2D queue."""

    def __init__(self, gateway, data_dir):
        self.gateway = gateway
        self.data_dir = data_dir
        self.telemetry = {}  # client id -> deque of records
        self.counts = {}  # client id -> [messages, last time]
        self._pos = 0
        self._partial = b""
        self._last = {}  # event name -> last JSON sent, so only changes go out
        self._ids = (None, [])  # (registry document, its identities): re-listed only when it changes
        self.sent = deque(maxlen=100)  # (device, mid) of the C2D messages sent from the page, newest last
        self._adu = {}  # file name -> (its stat, its contents): DATA/adu re-read only when a file changed
        self.listeners = set()

    def devices(self):
        """Every registered identity with its connection, counts and model id; never a key."""
        conns = {c["client_id"]: c for c in self.gateway.status()}
        doc = self.gateway.registry.current()  # re-read only when the file changed
        if self._ids[0] is not doc:
            self._ids = (doc, registry.list_devices(self.data_dir))
        deployed = self._adu_file(adu.DEPLOYMENTS, adu.deployments)
        now = datetime.datetime.now(datetime.timezone.utc)
        out = []
        for d in self._ids[1]:
            cid = _client_id(d["device"], d["module"])
            c = conns.get(cid)
            n, last = self.counts.get(cid, (0, None))
            twin = self.gateway.store.twins.get(cid) or {}
            row = {"id": cid, "device": d["device"], "module": d["module"], "auth": d["auth"],
                   "parent": d["parent"], "connected": c is not None, "thumbprint": d["thumbprint"],
                   "since": c and c.get("since"), "peer": c and c.get("peer"),
                   "model_id": c and c.get("model_id"), "messages": n, "last": last,
                   "expiry": cert_expiry(twin.get("reported"), now)}
            if not d["module"]:  # ADU updates devices, not modules: what `update status` says of it
                row["update"] = adu.device_status(deployed.get(d["device"]), twin)
                row["group"] = (twin.get("tags") or {}).get(adu.GROUP_TAG)
            out.append(row)
        return out

    def _adu_file(self, name, read):
        """read(data_dir), re-run only when DATA/adu/<name> changed (the page looks twice a second)."""
        try:
            st = os.stat(os.path.join(self.data_dir, adu.ADU_DIR, name))
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            key = None
        if name not in self._adu or self._adu[name][0] != key:
            try:
                value = read(self.data_dir) if key else {}
            except adu.AduError as e:  # said once per version of the file, not twice a second
                self.gateway.say(f"web view: {e}")
                value = {}
            self._adu[name] = (key, value)
        return self._adu[name][1]

    def updates(self):
        """The imported updates, as `edgekit gateway update import` recorded them, the last imported last."""
        out = []
        found = self._adu_file(adu.UPDATES, adu.updates)
        for ref, rec in sorted(found.items(), key=lambda kv: (str(kv[1].get("imported") or ""), kv[0])):
            doc = rec.get("import_manifest") or {}
            out.append({"update": ref, "compatibility": doc.get("compatibility"), "imported": rec.get("imported"),
                        "handlers": [s.get("handler") for s in (doc.get("instructions") or {}).get("steps", [])],
                        "files": len(rec.get("files") or {})})
        return out

    def twins(self):
        """Desired and reported of every twin the store holds."""
        return json.loads(json.dumps(self.gateway.store.twins))

    def c2d(self):
        """Queued (not yet acknowledged) C2D message ids per device."""
        return {d: [m["mid"] for m in msgs] for d, msgs in self.gateway.store.c2d.items()}

    def c2d_states(self):
        """What became of the C2D messages sent from the page: mid -> queued, delivered, expired or unknown."""
        queued = self.c2d()
        return {mid: self.gateway.c2d.state(d, mid, set(queued.get(d, ()))) for d, mid in self.sent}

    def read_telemetry(self):
        """New whole records of telemetry.jsonl since the last call."""
        path = os.path.join(self.data_dir, TELEMETRY)
        try:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_size < self._pos:  # the store cut a torn record back
                    self._pos, self._partial = os.fstat(f.fileno()).st_size, b""
                f.seek(self._pos)
                chunk = f.read(1 << 20)
        except FileNotFoundError:
            return []
        self._pos += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()  # a line still being written: finish it next time
        records = []
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a torn line: the store cuts it back; the page just skips it
            if not isinstance(rec, dict) or "device" not in rec:
                continue
            cid = _client_id(rec["device"], rec.get("module"))
            rec = _for_the_page(cid, rec)
            self.telemetry.setdefault(cid, deque(maxlen=KEEP)).append(rec)
            count = self.counts.setdefault(cid, [0, None])
            count[0] += 1
            count[1] = rec.get("time")
            records.append(rec)
        return records

    def snapshot(self):
        """The whole state, for a page that just opened."""
        return {"devices": self.devices(), "twins": self.twins(), "c2d": self.c2d(),
                "telemetry": {cid: list(q) for cid, q in self.telemetry.items()},
                "upstream": self.gateway.upstream.summary(), "c2d_states": self.c2d_states(),
                "updates": self.updates()}

    def tick(self):
        """Look once; tell every listener what changed (new telemetry, devices, twins, C2D)."""
        records = self.read_telemetry()
        events = []
        if records:
            events.append(("telemetry", records))
        for name, value in (("devices", self.devices()), ("twins", self.twins()), ("c2d", self.c2d()),
                            ("upstream", self.gateway.upstream.summary()), ("c2d_states", self.c2d_states()),
                            ("updates", self.updates())):
            text = json.dumps(value, sort_keys=True)
            if self._last.get(name) != text:
                self._last[name] = text
                events.append((name, value))
        for q in list(self.listeners):
            for ev in events:
                if q.qsize() > 1000:  # a stalled page: drop it rather than grow
                    self.listeners.discard(q)
                    break
                q.put_nowait(ev)


def cert_expiry(reported, now):
    """What the device reports of its certificates' ends (the firmware's reported `certExpiry`:
    {"client": ISO time or null, "roots": [ISO time, ...]}), with a warning for each that ends
    within 30 days (or has ended), as `edgekit check` and `gateway serve` warn; None when not reported."""
    doc = (reported or {}).get("certExpiry") if isinstance(reported, dict) else None
    if not isinstance(doc, dict):
        return None
    named = [("client certificate", doc.get("client"))]
    roots = doc.get("roots") if isinstance(doc.get("roots"), list) else []
    named += [(f"trusted root {i + 1}" if len(roots) > 1 else "trusted root", r) for i, r in enumerate(roots)]
    out = {"client": doc.get("client"), "roots": roots, "first": None, "warnings": [], "short": None}
    for what, iso in named:
        if not isinstance(iso, str):
            continue
        try:
            end = datetime.datetime.fromisoformat(iso.replace("Z", "+00:00"))
        except ValueError:
            out["warnings"].append(f"{what}: unreadable date {iso[:40]!r}")
            out["short"] = out["short"] or f"{what}: unreadable date"
            continue
        if end.tzinfo is None:
            end = end.replace(tzinfo=datetime.timezone.utc)
        if out["first"] is None or iso < out["first"]:
            out["first"] = iso
        left = end - now
        if left <= datetime.timedelta(0):
            out["warnings"].append(f"{what} expired {iso}")
            short = f"{what} expired"
        elif left < WARN_BEFORE:
            out["warnings"].append(f"{what} expires {iso} (in {left.days} days)")
            short = f"{what} in {left.days} d"
        else:
            continue
        if out["short"] is None:  # the table's cell: the first warned, the rest on hover
            out["short"] = short
    if len(out["warnings"]) > 1:
        out["short"] += f" (+{len(out['warnings']) - 1})"
    return out


def _for_the_page(cid, rec):
    """What the page shows of a record: the numbers it charts and the body cut to SHOWN_BODY.

    Keeping 200 whole records per identity, as text and parsed, grew the gateway by 100 MB and
    /api/state to 99 MB for 200 messages of 245 KB; this keeps a few KB per record.
    """
    body = rec.get("body")
    value = _unpack(body)
    out = {"id": cid, "device": rec["device"], "module": rec.get("module"), "time": rec.get("time"),
           "properties": {k: str(v)[:200] for k, v in list((rec.get("properties") or {}).items())[:50]},
           "body": body if not isinstance(body, str) or len(body) <= SHOWN_BODY else body[:SHOWN_BODY] + "…",
           "json": _numbers(value)}
    if rec.get("body_encoding"):
        out["body_encoding"] = rec["body_encoding"]
    return out


def _numbers(value):
    """The numeric fields of a reading (or of each reading in a batch): all the charts need."""
    def fields(d):
        return {k: v for k, v in list(d.items())[:100] if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if isinstance(value, list):
        return [fields(r) for r in value[:1000] if isinstance(r, dict)]
    if isinstance(value, dict):
        out = fields(value)
        if isinstance(value.get("readings"), list):
            out["readings"] = [fields(r) for r in value["readings"][:1000] if isinstance(r, dict)]
        return out
    return None


def _unpack(body):
    """A JSON object body as a dict (a batch of readings as a list of dicts), else None."""
    if not isinstance(body, str) or not body[:1] in "{[":
        return None
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, (dict, list)) else None


def _json_body_error(text):
    return web.json_response({"status": 400, "error": text}, status=400)


class WebView:
    """The aiohttp application and its site; start() and stop() from serve()."""

    def __init__(self, gateway, data_dir, bind="127.0.0.1", port=0, token=None):
        self.gateway = gateway
        self.bind = bind
        self.port = port
        self.token = token or secrets.token_urlsafe(24)
        self.data_dir = os.fspath(data_dir)
        self.watcher = Watcher(gateway, self.data_dir)
        self._runner = None
        self._task = None
        app = web.Application(middlewares=[self._guard], client_max_size=256 * 1024)
        app.add_routes([
            web.get("/", self._index),
            web.get("/api/state", self._state),
            web.get("/api/events", self._events),
            web.post("/api/method", self._method),
            web.post("/api/twin", self._twin),
            web.post("/api/c2d", self._c2d),
            web.post("/api/upstream", self._upstream),
            web.post("/api/tags", self._tags),
            web.post("/api/device/add", self._device_add),
            web.post("/api/device/remove", self._device_remove),
            web.post("/api/secret", self._secret),
            web.post("/api/update/deploy", self._update_deploy),
            web.post("/api/update/cancel", self._update_cancel),
            web.static("/static", STATIC),
        ])
        self.app = app

    @property
    def url(self):
        """The URL to open, with the token (printed once by serve)."""
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"http://{host}:{self.port}/?token={self.token}"

    async def start(self):
        """Listen; start the watcher; return the bound port."""
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.bind, self.port)
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            raise WebError(f"cannot serve the web view on {self.bind}:{self.port} ({e.strerror or e});"
                           " pick another --web port (0 picks a free one)")
        self.port = self._runner.addresses[0][1]
        self.watcher.tick()
        self._task = asyncio.get_running_loop().create_task(self._watch())
        return self.port

    async def stop(self):
        """Stop watching and serving; open event streams end."""
        if self._task is not None:
            self._task.cancel()
        for q in list(self.watcher.listeners):
            q.put_nowait(None)
        if self._runner is not None:
            await self._runner.cleanup()

    async def _watch(self):
        while True:
            await asyncio.sleep(TICK)
            try:
                self.watcher.tick()
            except (OSError, ValueError) as e:  # e.g. a registry being rewritten: next tick
                self.gateway.say(f"web view: could not read the gateway's state ({e})")

    # --- security ------------------------------------------------------------------------

    def _origin_ok(self, request):
        host = request.headers.get("Host", "")
        allowed = {f"127.0.0.1:{self.port}", f"localhost:{self.port}", f"[::1]:{self.port}",
                   f"{self.bind}:{self.port}", f"[{self.bind}]:{self.port}"}
        if host not in allowed:
            return False  # DNS rebinding: a foreign name pointing at loopback
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"http://{host}":
            return False
        return request.headers.get("Sec-Fetch-Site", "same-origin") in ("same-origin", "none")

    def _token_ok(self, given):
        return bool(given) and secrets.compare_digest(given, self.token)

    @web.middleware
    async def _guard(self, request, handler):
        if request.path == "/favicon.ico" and request.method == "GET":
            # The icon tells nothing, and the browser asks for it on the no-token page too.
            return web.Response(body=FAVICON, content_type="image/svg+xml",
                                headers={"Cache-Control": "max-age=86400"})
        if not self._origin_ok(request):
            return web.json_response({"status": 403, "error": "cross-origin request refused"}, status=403)
        header = request.headers.get(HEADER, "")
        if request.method != "GET":
            ok = self._token_ok(header)  # a cookie alone never authorises a change
        else:
            ok = any(self._token_ok(t) for t in (header, request.cookies.get(COOKIE, ""),
                                                 request.query.get("token", "")))
        if not ok:
            if request.method == "GET" and not request.path.startswith("/api/"):
                return web.Response(text=NO_TOKEN_PAGE, status=401, content_type="text/html",
                                    headers={"Cache-Control": "no-store"})
            return web.json_response({"status": 401, "error": "missing or wrong token: open the URL"
                                      " 'edgekit gateway serve --web' printed"}, status=401)
        resp = await handler(request)
        resp.headers["Cache-Control"] = "no-store"
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Content-Security-Policy"] = ("default-src 'self'; style-src 'self' 'unsafe-inline';"
                                                   " img-src 'self' data:; frame-ancestors 'none'")
        return resp

    # --- pages and API ---------------------------------------------------------------------

    async def _index(self, request):
        resp = web.FileResponse(os.path.join(STATIC, "index.html"))
        resp.set_cookie(COOKIE, self.token, httponly=True, samesite="Strict", path="/")
        return resp

    async def _state(self, request):
        state = self.watcher.snapshot()
        state["token"] = self.token  # for the page's POST header; the cookie alone cannot POST
        state["hostname"] = self.gateway.hostname
        return web.json_response(state)

    async def _events(self, request):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        await resp.prepare(request)
        q = asyncio.Queue()
        self.watcher.listeners.add(q)
        try:
            await resp.write(b": edgekit\n\n")
            while True:
                try:
                    ev = await asyncio.wait_for(q.get(), 15)
                except asyncio.TimeoutError:
                    await resp.write(b": keepalive\n\n")
                    continue
                if ev is None:
                    break
                name, data = ev
                await resp.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.watcher.listeners.discard(q)
        return resp

    async def _args(self, request):
        try:
            args = await request.json()
        except ValueError:
            raise HubError(400, "the request body is not JSON")
        if not isinstance(args, dict) or not isinstance(args.get("device"), str) or not args["device"]:
            raise HubError(400, "give the device id as 'device'")
        module = args.get("module") or None
        if module is not None and not isinstance(module, str):
            raise HubError(400, "'module' must be a string")
        return args, module

    async def _hub(self, request, act):
        try:
            args, module = await self._args(request)
            return web.json_response(await act(args, module))
        except HubError as e:
            return web.json_response({"status": e.status, "error": str(e)}, status=200)
        except (TypeError, ValueError) as e:
            return web.json_response({"status": 400, "error": str(e)}, status=200)

    async def _method(self, request):
        async def act(args, module):
            timeout = args.get("timeout", 30)
            if not isinstance(timeout, (int, float)) or isinstance(timeout, bool):
                raise HubError(400, "'timeout' must be a number of seconds")
            status, payload = await self.gateway.invoke_method(args["device"], str(args.get("name", "")),
                                                               args.get("payload"), timeout=timeout,
                                                               module_id=module)
            return {"status": status, "payload": payload}
        return await self._hub(request, act)

    async def _twin(self, request):
        async def act(args, module):
            version = await self.gateway.update_twin(args["device"], args.get("desired"), module_id=module)
            return {"status": 200, "version": version}
        return await self._hub(request, act)

    async def _c2d(self, request):
        async def act(args, module):
            props = args.get("properties") or {}
            if not isinstance(props, dict):
                raise HubError(400, "'properties' must be an object of names to values")
            body = args.get("body", "")
            if not isinstance(body, str):
                body = json.dumps(body)
            sent = await self.gateway.send_c2d(args["device"], body, props, system=_c2d_system(args.get("system")))
            self.watcher.sent.append((args["device"], sent["mid"]))
            return {"status": 200, "mid": sent["mid"], "state": sent["state"]}
        return await self._hub(request, act)

    async def _tags(self, request):
        async def act(args, module):
            tags = await self.gateway.update_tags(args["device"], args.get("tags"), module_id=module)
            self.watcher.tick()  # the page shows the new tags at once
            return {"status": 200, "tags": tags}
        return await self._hub(request, act)

    async def _device_add(self, request):
        # What `edgekit gateway device add` does, through the same registry function.
        async def act(args, module):
            auth = args.get("auth") or registry.AUTH_SAS
            thumb = args.get("thumbprint") or None
            if auth not in (registry.AUTH_SAS, registry.AUTH_THUMBPRINT, registry.AUTH_CA):
                raise HubError(400, f"auth {auth!r} is none of sas, x509_thumbprint, x509_ca")
            if module and auth != registry.AUTH_SAS:
                raise HubError(400, "modules behind a gateway authenticate with symmetric keys only; "
                                    "pick 'symmetric key' for a module")
            if auth == registry.AUTH_THUMBPRINT and not thumb:
                raise HubError(400, "an X.509 thumbprint device needs its certificate's thumbprint")
            if registry.lookup(registry.load(self.data_dir), args["device"], module) is not None:
                raise HubError(409, f"'{_client_id(args['device'], module)}' already exists; delete it first "
                                    "to give it new credentials")
            try:
                registry.add_device(self.data_dir, args["device"], module,
                                    x509_thumbprint=thumb if auth == registry.AUTH_THUMBPRINT else None,
                                    x509_ca=auth == registry.AUTH_CA, parent=args.get("parent", True) is not False)
            except registry.RegistryError as e:
                raise HubError(400, str(e))
            self.watcher.tick()
            return {"status": 200, "id": _client_id(args["device"], module), "devices": self.watcher.devices()}
        return await self._hub(request, act)

    async def _device_remove(self, request):
        # `edgekit gateway device remove`: its twin, queued C2D and connection go with it (the gateway's registry watch).
        async def act(args, module):
            try:
                registry.remove_device(self.data_dir, args["device"], module)
            except registry.RegistryError as e:
                raise HubError(404, str(e))
            self.watcher.tick()
            return {"status": 200, "removed": _client_id(args["device"], module)}
        return await self._hub(request, act)

    async def _secret(self, request):
        # Keys and connection strings, only when the page asks (a POST: the token in a header). Never logged.
        async def act(args, module):
            ident = registry.lookup(registry.load(self.data_dir), args["device"], module)
            if ident is None:
                raise HubError(404, f"no identity '{_client_id(args['device'], module)}' in the registry")
            cs = registry.show_connection_string(self.data_dir, args["device"], module)
            out = {"status": 200, "id": ident.client_id, "auth": ident.auth, "connection_string": cs}
            if ident.key:
                out["primary_key"], out["secondary_key"] = ident.key, ident.secondary_key
                out["secondary_connection_string"] = registry.connection_string(
                    ident.hub, ident.device_id, ident.module_id, ident.secondary_key,
                    cs.rpartition("GatewayHostName=")[2] if "GatewayHostName=" in cs else None)
            else:
                out["primary_thumbprint"], out["secondary_thumbprint"] = ident.thumbprint, ident.secondary_thumbprint
            return out
        return await self._hub(request, act)

    async def _update(self, request, act):
        # What `edgekit gateway update deploy|cancel` runs, the same functions: they reach this gateway
        # through its control port as the CLI does (a thread, so this loop stays free to answer them).
        try:
            args, module = await self._args(request)
            if module:
                raise HubError(400, "Device Update updates devices, not modules")
            group = args.get("group") or None
            if group is not None and not isinstance(group, str):
                raise HubError(400, "'group' must be the ADUGroup tag's value")
            result = await asyncio.to_thread(act, args, group)
        except (adu.AduError, HubError, control.NotRunning, TypeError, ValueError) as e:
            status = getattr(e, "status", 503 if isinstance(e, control.NotRunning) else 400)
            return web.json_response({"status": status, "error": " ".join(str(e).split())})  # one line
        self.watcher.tick()  # the page shows the deployment at once
        return web.json_response({"status": 200, **result})

    async def _update_deploy(self, request):
        # To the device, or to its ADUGroup group (every device tagged so); the cache as the CLI gets it.
        def act(args, group):
            ref = args.get("update")
            if not isinstance(ref, str) or not ref:
                raise HubError(400, "pick an imported update (provider/name/version)")
            return adu.deploy(self.data_dir, ref, () if group else [args["device"]], group)
        return await self._update(request, act)

    async def _update_cancel(self, request):
        def act(args, group):
            return adu.cancel(self.data_dir, () if group else [args["device"]], group)
        return await self._update(request, act)

    async def _upstream(self, request):
        # The switch: lose or regain IoT Hub, as `edgekit gateway upstream offline|online`.
        try:
            args = await request.json()
        except ValueError:
            args = None
        if not isinstance(args, dict):
            return web.json_response({"status": 400, "error": "the request body is not a JSON object"})
        try:
            result = await self.gateway.set_upstream(args.get("state"))
        except HubError as e:
            return web.json_response({"status": e.status, "error": str(e)})
        self.watcher.tick()  # the page hears of it at once
        return web.json_response({"status": 200, **result})


# The C2D form's names for IoT Hub's system properties, as `send-c2d`'s options name them.
C2D_FIELDS = {"message_id": "$.mid", "correlation_id": "$.cid", "content_type": "$.ct",
              "content_encoding": "$.ce", "expiry": "$.exp"}


def _c2d_system(fields):
    """The page's system fields as send_c2d's system properties; expiry as `send-c2d --expiry`:
    seconds from now, or an ISO 8601 time."""
    if fields is None:
        return None
    if not isinstance(fields, dict):
        raise HubError(400, "'system' must be an object of message_id, correlation_id, content_type, "
                            "content_encoding, expiry")
    out = {}
    for name, value in fields.items():
        if name not in C2D_FIELDS:
            raise HubError(400, f"{name!r} is not a C2D field; use {', '.join(C2D_FIELDS)}")
        if value is None or str(value).strip() == "":
            continue
        value = str(value).strip()
        if name == "expiry":
            try:
                seconds = float(value)
            except ValueError:
                seconds = None  # an ISO time: c2d.system_properties checks it
            if seconds is not None:
                value = c2d_props.iso_utc(datetime.datetime.now(datetime.timezone.utc)
                                          + datetime.timedelta(seconds=seconds))
        out[C2D_FIELDS[name]] = value
    return out
