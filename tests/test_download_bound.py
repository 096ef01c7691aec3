"""`edgekit flash --download` against a hostile mirror (issue 25): the download is bounded by the
board's flash, checked while it streams, and nothing partial or unverified stays in the cache.

The mirror is a local HTTP server on 127.0.0.1 in a thread.
"""
import dataclasses
import http.server
import threading
import time

import pytest

from edgekit.boards import load_board
from edgekit.errors import Interrupted
from edgekit.flash import DownloadError, fetch_release, image_bound

BLOCK = b"\xff" * (1 << 16)


def _small_board():
    # 1 MB of flash, written from 0x1000: an image bigger than 1 MB - 4 KB cannot be this board's.
    board = load_board("esp32-devkitc")
    return dataclasses.replace(board, flash_size="1MB")


@pytest.fixture
def mirror():
    """(base URL, state) of a server whose reply state["reply"](handler) writes; state["sent"] counts."""
    state = {"sent": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            try:
                state["reply"](self)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client hung up, as it should

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/fw", state
    server.shutdown()
    server.server_close()
    thread.join(5)


def _endless(state, limit=64 << 20):
    # No Content-Length: the body ends only when the server stops (64 MB here, so the old code ends).
    def reply(handler):
        handler.send_response(200)
        handler.end_headers()
        while state["sent"] < limit:
            handler.wfile.write(BLOCK)
            state["sent"] += len(BLOCK)
    return reply


def test_the_bound_is_the_flash_the_image_is_written_into():
    assert image_bound(load_board("esp32-devkitc")) == 4 * 1024 * 1024 - 0x1000
    assert image_bound(load_board("esp32-s3-devkitc-1")) == 8 * 1024 * 1024


def test_an_endless_body_stops_at_the_boards_flash_size(tmp_path, mirror):
    base, state = mirror
    state["reply"] = _endless(state)
    board = _small_board()
    cache = tmp_path / "cache"
    started = time.monotonic()
    with pytest.raises(DownloadError) as e:
        fetch_release(board, cache, base_url=base, sha256="0" * 64, say=lambda s: None)
    assert time.monotonic() - started < 10
    message = str(e.value)
    assert "\n" not in message
    assert f"more than the {image_bound(board)} bytes" in message and "1MB" in message
    assert "nothing was kept" in message
    assert list(cache.iterdir()) == []


def test_a_content_length_over_the_bound_is_refused_before_reading(tmp_path, mirror):
    base, state = mirror
    release = threading.Event()

    def reply(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(300 << 20))
        handler.end_headers()
        handler.wfile.flush()
        release.wait(5)  # the body would only come now: a client that waits for it is too late
        handler.wfile.write(BLOCK)
        state["sent"] += len(BLOCK)

    state["reply"] = reply
    cache = tmp_path / "cache"
    started = time.monotonic()
    try:
        with pytest.raises(DownloadError, match=r"announces 314572800 bytes \(Content-Length\), more than"):
            fetch_release(_small_board(), cache, base_url=base, sha256="0" * 64, say=lambda s: None)
        assert time.monotonic() - started < 3
    finally:
        release.set()
    assert state["sent"] == 0 and list(cache.iterdir()) == []


def test_ctrl_c_during_a_download_leaves_nothing_in_the_cache(tmp_path, mirror):
    base, state = mirror
    state["reply"] = _endless(state, limit=4 << 20)
    cache = tmp_path / "cache"

    def say(line):
        if line.startswith("downloading"):
            raise KeyboardInterrupt

    with pytest.raises(Interrupted, match="nothing was kept"):
        fetch_release(load_board("esp32-devkitc"), cache, base_url=base, sha256="0" * 64, say=say)
    assert list(cache.iterdir()) == []
