"""The loopback control interface between hub-side commands and a running `serve`.

One JSON request per TCP connection on 127.0.0.1: {"token": ..., "op": ..., "args": {...}},
answered by {"ok": result} or {"error": message, "status": http-like status}. The token
is random per start and lives in DATA/control.token (0600): only someone who can read the
data folder can drive the gateway. DATA/gateway.json says where to connect.
"""
import asyncio
import json
import os
import secrets
import socket

from edgekit.certs.pem import write_atomic
from edgekit.gateway import GATEWAY_JSON
from edgekit.gateway.core import HubError

TOKEN = "control.token"
_LIMIT = 1 << 20
# Any local user can connect, so the token is checked before a connection costs anything: a
# request must arrive whole within REQUEST_SECONDS; at most MAX_WAITING connections wait for theirs,
# and when one more comes the one that has waited longest is closed (so idle connections, however
# many and however often reopened, cannot keep a real request from being read); only requests
# with the right token take one of the MAX_CONNECTIONS slots (further ones get a 503).
REQUEST_SECONDS = 10.0
MAX_WAITING = 64
MAX_CONNECTIONS = 32


class NotRunning(ValueError):
    """No gateway answers for this data folder."""


class ControlServer:
    """Serves the hub-side operations of a core.Gateway on 127.0.0.1."""

    def __init__(self, gateway, data_dir, request_seconds=REQUEST_SECONDS, max_connections=MAX_CONNECTIONS,
                 max_waiting=MAX_WAITING):
        self.gateway = gateway
        self.data_dir = os.fspath(data_dir)
        self.token = secrets.token_hex(16)
        self.port = None
        self.request_seconds = request_seconds
        self.max_connections = max_connections
        self.max_waiting = max_waiting
        self.open_connections = 0  # requests with the right token being served
        self._waiting = {}  # writer -> None, oldest first: connections whose request has not come
        self._server = None
        self._ops = {
            "ping": lambda: {"hostname": gateway.hostname},
            "status": gateway.status,
            "send_c2d": gateway.send_c2d,
            "c2d_state": gateway.c2d_state,
            "invoke_method": gateway.invoke_method,
            "update_twin": gateway.update_twin,
            "get_twin": gateway.get_twin,
            "update_tags": gateway.update_tags,
            "upstream": gateway.set_upstream,
        }

    def add_op(self, name, function):
        """Serve one more operation (serve adds the Connected Cache's, which the gateway core does not own)."""
        self._ops[name] = function

    async def start(self):
        """Listen on a free loopback port and write the token file."""
        write_atomic(os.path.join(self.data_dir, TOKEN), self.token.encode(), private=True)
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=_LIMIT)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self):
        """Stop listening and remove the token file."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        try:
            os.unlink(os.path.join(self.data_dir, TOKEN))
        except FileNotFoundError:
            pass

    async def _serve(self, reader, writer):
        try:
            line = await self._request(reader, writer)
            if line is None:
                return  # said nothing in time, or made room for a newer connection: no answer
            answer = self._refusal(line)
            if answer is None:
                if self.open_connections >= self.max_connections:
                    answer = {"error": f"the control port is serving {self.max_connections} requests; "
                                       "try again in a few seconds", "status": 503}
                else:
                    self.open_connections += 1
                    try:
                        answer = await self._answer(json.loads(line))
                    finally:
                        self.open_connections -= 1
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    async def _request(self, reader, writer):
        """The request line, or None when it did not come in time or this connection was evicted."""
        if len(self._waiting) >= self.max_waiting:
            oldest = next(iter(self._waiting))
            del self._waiting[oldest]
            oldest.transport.abort()  # its readline ends; it had the longest to speak
        self._waiting[writer] = None
        try:
            line = await asyncio.wait_for(reader.readline(), self.request_seconds)
        except asyncio.TimeoutError:
            return None
        finally:
            self._waiting.pop(writer, None)
        return line or None  # b"": closed (or evicted) before a request

    def _refusal(self, line):
        """The answer refusing a request that is not JSON or has the wrong token; None for a good one."""
        try:
            req = json.loads(line)
        except ValueError:
            return {"error": "request is not JSON", "status": 400}
        if not isinstance(req, dict) or not secrets.compare_digest(str(req.get("token", "")), self.token):
            return {"error": "bad control token (is this the right --data folder?)", "status": 401}
        return None

    async def _answer(self, req):
        op = self._ops.get(req.get("op"))
        if op is None:
            return {"error": f"unknown operation {req.get('op')!r}", "status": 400}
        try:
            result = op(**(req.get("args") or {}))
            if asyncio.iscoroutine(result):
                result = await result
            return {"ok": result}
        except HubError as e:
            return {"error": str(e), "status": e.status}
        except TypeError as e:
            return {"error": f"bad arguments for {req.get('op')}: {e}", "status": 400}
        except (ValueError, OSError) as e:
            # e.g. an unreadable registry or a full disk: say so, not "closed without an answer"
            return {"error": str(e), "status": 500}


def gateway_info(data_dir):
    """The contents of DATA/gateway.json; NotRunning when no gateway wrote one."""
    path = os.path.join(os.fspath(data_dir), GATEWAY_JSON)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        raise NotRunning(f"no gateway is running for {data_dir} ({GATEWAY_JSON} missing); start one with "
                         f"'edgekit gateway serve --pki DIR --hostname H --data {data_dir}'")


def call(data_dir, op, wait=10.0, **args):
    """Run one operation on the gateway serving data_dir; return its result or raise HubError/NotRunning."""
    info = gateway_info(data_dir)
    try:
        with open(os.path.join(os.fspath(data_dir), TOKEN)) as f:
            token = f.read().strip()
    except OSError:
        raise NotRunning(f"the gateway for {data_dir} left no {TOKEN}; restart 'edgekit gateway serve'")
    req = json.dumps({"token": token, "op": op, "args": args}).encode() + b"\n"
    try:
        with socket.create_connection(("127.0.0.1", int(info["control_port"])), timeout=wait) as s:
            s.sendall(req)
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
    except socket.timeout:
        raise HubError(504, f"the gateway did not answer '{op}' within {wait:g} s")
    except OSError as e:
        raise NotRunning(f"the gateway for {data_dir} does not answer on its control port "
                         f"({e.strerror or e}); is 'edgekit gateway serve' still running?")
    try:
        answer = json.loads(buf)
    except ValueError:
        raise NotRunning(f"the gateway for {data_dir} closed the control connection without an answer")
    if "error" in answer:
        raise HubError(answer.get("status", 500), answer["error"])
    return answer["ok"]
