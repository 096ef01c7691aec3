"""Microsoft Connected Cache, played locally: the update files over plain HTTP, as a gateway's MCC serves them.

A device's Delivery Optimization agent swaps the host of an ADU file URL for its gateway's and adds
`?cacheHostOrigin=<original host>` (microsoft/do-client src/.../download.cpp SwapUrlHostNameForMCC,
port 80 unless configured); it resumes a broken download with HTTP Range requests (it fails with
DO_E_INSUFFICIENT_RANGE_SUPPORT when a server ignores them). The real cache fetches a miss from the
origin; this one holds only what `edgekit gateway update import` put under DATA/adu, so anything
else is a 404. aiohttp's FileResponse answers Range (206, 416 past the end) and HEAD.

Started by `serve` when asked (--cache-port) or when DATA has updates, else by the first deploy
(control op "adu_cache"). Port 80 where it can bind, else a free port, said in one line; a deploy
then puts that port in the file URLs (adu.file_urls).
"""
import os

from edgekit.gateway import adu

DEFAULT_PORT = 80


class CacheError(ValueError):
    """The cache cannot listen as asked."""


class Cache:
    def __init__(self, data_dir, host="127.0.0.1", port=None, out=print, on_start=None):
        self.data_dir = os.fspath(data_dir)
        self.host = host
        self.wanted = port  # None: 80, or a free port when 80 cannot be had
        self.port = None
        self.out = out
        self.on_start = on_start
        self.served = 0
        self._runner = None

    async def _listen(self, port):
        from aiohttp import web  # only when the cache runs: serve starts faster without it
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._get)  # GET routes answer HEAD too
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        return site._server.sockets[0].getsockname()[1]

    async def ensure(self):
        """Listen if not yet; return {"port": ...}."""
        if self.port is None:
            port = DEFAULT_PORT if self.wanted is None else self.wanted
            try:
                self.port = await self._listen(port)
            except OSError as e:
                why = os.strerror(e.errno) if e.errno else str(e)  # asyncio's own text repeats the address
                if self.wanted is not None:
                    raise CacheError(f"the cache cannot listen on {self.host}:{port} ({why}); "
                                     "pick another --cache-port (0 picks a free one)")
                self.port = await self._listen(0)
                self.out(f"cache: port {port} is not available ({why}); serving on "
                         f"{self.host}:{self.port} instead (deployments carry that port in their file URLs)")
            self.out(f"connected cache on http://{self.host}:{self.port}/ (update files for devices)")
            if self.on_start:
                self.on_start(self.port)
        return {"port": self.port}

    async def stop(self):
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _get(self, request):
        from aiohttp import web
        origin = request.query.get("cacheHostOrigin")
        if not origin:
            # Delivery Optimization always adds it; without it this is not a cache request.
            return web.Response(status=400, text="cacheHostOrigin is missing: ask for "
                                                 "http://<gateway>/<path>?cacheHostOrigin=<original host>\n")
        found = adu.served_file(self.data_dir, request.path) if origin == adu.ORIGIN_HOST else None
        if found is None or not os.path.isfile(found[0]):
            return web.Response(status=404, text="no such update file here; import and deploy it again\n")
        self.served += 1
        range_ = request.headers.get("Range")
        self.out(f"cache: {request.method} {request.path}{' ' + range_ if range_ else ''} "
                 f"-> {request.remote}")
        return web.FileResponse(found[0], headers={"Content-Type": "application/octet-stream"})
