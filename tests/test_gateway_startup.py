"""`gateway serve`'s start-up: a PKI past or near its end, and what `--detach` shows.

The PKIs here are real chains made with a clock set back (make_demo_pki(now=...)): openssl
itself calls the 40-day-old one expired, as a device would.
"""
import datetime
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from edgekit.certs.demo import make_demo_pki
from edgekit.gateway import serve

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime.datetime.now(datetime.timezone.utc)


def _edgekit(*args, timeout=90):
    return subprocess.run([sys.executable, "-m", "edgekit", "gateway", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def expired_pki(tmp_path_factory):
    """Made 40 days ago, valid 30: every certificate ended 10 days ago."""
    return make_demo_pki(tmp_path_factory.mktemp("old") / "pki", "localhost", days=30,
                         now=NOW - datetime.timedelta(days=40))


@pytest.fixture(scope="module")
def ending_pki(tmp_path_factory):
    """Made 10 days ago, valid 30: 20 days left."""
    return make_demo_pki(tmp_path_factory.mktemp("ending") / "pki", "localhost", days=30,
                         now=NOW - datetime.timedelta(days=10))


def test_the_expired_pki_is_a_real_expired_chain(expired_pki):
    r = subprocess.run(["openssl", "verify", "-CAfile", expired_pki.root_cert, "-untrusted",
                        expired_pki.intermediate_cert, expired_pki.edge_ca_cert], capture_output=True, text=True)
    assert r.returncode != 0 and "certificate has expired" in r.stdout + r.stderr


@pytest.mark.parametrize("detach", [False, True])
def test_serve_refuses_an_expired_pki_in_one_line(expired_pki, tmp_path, detach):
    data = tmp_path / "gw"
    try:
        r = _edgekit("serve", "--pki", expired_pki.outdir, "--hostname", "localhost", "--listen", "0",
                     *(["--detach"] if detach else []), "--data", str(data), timeout=30)
    finally:
        _edgekit("stop", "--data", str(data))  # a gateway that did start (the bug) is not left running
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 1 and len(lines) == 1, r.stdout + r.stderr
    ended = (NOW - datetime.timedelta(days=10)).strftime("%Y-%m-%d")
    assert lines[0].startswith("error: the PKI has expired: '") and f"ended {ended}" in lines[0]
    assert "and 2 more of its certificates" in lines[0]  # root, intermediate and edge CA end together
    assert "ready" not in r.stdout
    # Refused before a server key is made or gateway.json written.
    assert not (data / "tls" / "server.key.pem").exists() and not (data / "gateway.json").exists()


def test_a_pki_within_30_days_of_its_end_is_named_and_a_longer_one_is_not(ending_pki, tmp_path):
    warning = serve.check_pki_dates(serve.find_pki(ending_pki.outdir))
    assert warning.startswith("warning: the PKI expires in 19 days: '")
    assert "devices refuse the gateway from then on" in warning
    longer = make_demo_pki(tmp_path / "long", "localhost", days=60)
    assert serve.check_pki_dates(serve.find_pki(longer.outdir)) is None


def test_serve_detach_with_web_prints_the_address_its_token_and_warnings(ending_pki, tmp_path):
    data = tmp_path / "gw"
    up = _edgekit("serve", "--pki", ending_pki.outdir, "--hostname", "localhost", "--listen", "0", "--detach",
                  "--web", "--data", str(data))
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        info = json.loads((data / "gateway.json").read_text())
        web = [ln for ln in up.stdout.splitlines() if ln.startswith("web view on ")]
        assert len(web) == 1, up.stdout
        url = web[0][len("web view on "):]
        assert url.startswith(f"http://127.0.0.1:{info['web_port']}/?token=")
        assert "token" not in json.dumps(info)  # the token stays out of gateway.json
        with urllib.request.urlopen(url, timeout=10) as page:  # the printed token opens the page
            assert page.status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url.split("?")[0], timeout=10)
        assert refused.value.code == 401
        assert up.stderr.startswith("warning: the PKI expires in 19 days")  # as serve.log has it
    finally:
        down = _edgekit("stop", "--data", str(data))
    assert down.returncode == 0, down.stdout + down.stderr
