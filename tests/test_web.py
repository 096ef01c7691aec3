"""`gateway serve --web`: the page in a real headless Chromium, with the firmware under the real
MicroPython connected to the same gateway; and the page's security as plain HTTP requests."""
import json
import os
import re
import shutil
import time
import urllib.error
import urllib.request

import pytest

from device_helpers import DEVICE_HEAP, Device, build_board, wait_for, write_bundle
from gateway_helpers import GatewayProcess

from edgekit.gateway import hub

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
INSTALL = "apt-get install chromium chromium-driver (make test does it when run as root)"
DEVICE = "web-dev"


def _browser_missing():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    return f"no headless browser ({', '.join(missing)} missing): {INSTALL}" if missing else None


@pytest.fixture(scope="module")
def web_gateway(tmp_path_factory):
    gw = GatewayProcess(tmp_path_factory.mktemp("webgw"), devices=(), extra=["--web"])
    gw.start()
    m = re.search(r"web view on (http://\S+)", gw.log.read_text())
    assert m, "serve --web printed no URL:\n" + gw.log.read_text()[-2000:]
    gw.url = m.group(1)
    gw.base = gw.url.split("/?")[0]
    gw.token = gw.url.split("token=")[1]
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def device(web_gateway, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("webdev")
    cs = web_gateway.add_device(DEVICE, gateway_host="localhost")
    folder = write_bundle(tmp, web_gateway.pki, web_gateway.port, device=DEVICE, connection_string=cs,
                          interval=0.5)
    dev = Device("micropython", folder, build_board(tmp / "board"), heap=DEVICE_HEAP)
    dev.connection_string = cs
    dev.wait_log(r"connected to localhost:\d+ as " + DEVICE)
    yield dev
    dev.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    why = _browser_missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)  # CI installs it: a missing browser there is a broken set-up
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1280,1400",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page(browser, web_gateway, device):
    browser.get(web_gateway.url)
    _until(browser, lambda: browser.find_elements("css selector", f'#devices tr[data-id="{DEVICE}"]'),
           "the device's row")
    return browser


def _until(driver, predicate, what, timeout=20):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            value = predicate()
        except Exception:  # an element replaced while we read it: look again
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"the page never showed {what}; console: "
                         f"{[e.get('message') for e in driver.get_log('browser')][-5:]}")


def _request(url, method="GET", headers=None, body=None):
    req = urllib.request.Request(url, method=method, headers=headers or {},
                                 data=None if body is None else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null") if "json" in r.headers.get("Content-Type", "") else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def test_a_request_without_the_token_is_refused(web_gateway):
    base, token = web_gateway.base, web_gateway.token
    assert _request(base + "/api/state")[0] == 401
    assert _request(base + "/")[0] == 401
    assert _request(base + "/api/state?token=" + token[:-1] + "x")[0] == 401
    status, state = _request(base + "/api/state?token=" + token)
    assert status == 200 and state["hostname"] == "localhost"
    # A change needs the token in a header: the cookie a browser sends on its own is not enough.
    cookie = {"Cookie": "edgekit_web=" + token, "Content-Type": "application/json"}
    assert _request(base + "/api/c2d", "POST", cookie, {"device": "x", "body": "b"})[0] == 401
    # Another site's page (Origin), or a foreign name resolving to loopback (Host), is refused.
    evil = dict(cookie, **{"X-Edgekit-Token": token, "Origin": "http://evil.example"})
    assert _request(base + "/api/c2d", "POST", evil, {"device": "x", "body": "b"})[0] == 403
    rebound = {"Host": "evil.example:80", "X-Edgekit-Token": token}
    assert _request(base + "/api/state", headers=rebound)[0] == 403


def test_no_device_key_reaches_the_page(web_gateway, device):
    status, state = _request(web_gateway.base + "/api/state?token=" + web_gateway.token)
    assert status == 200
    key = re.search(r"SharedAccessKey=([^;]+)", device.connection_string).group(1)
    assert key not in json.dumps(state)
    assert [d for d in state["devices"] if d["id"] == DEVICE][0]["auth"] == "sas"


def test_the_device_appears_connected(page, web_gateway):
    row = _until(page, lambda: page.find_element("css selector", f'#devices tr[data-id="{DEVICE}"][data-connected="1"]'),
                 "the device as connected")
    assert "connected" in row.text and "127.0.0.1" in row.text
    assert page.current_url.rstrip("/") == web_gateway.base, "the token stayed in the address bar"


def test_telemetry_rows_and_charts_appear_and_grow(page):
    page.find_element("css selector", f'#devices tr[data-id="{DEVICE}"]').click()
    rows = _until(page, lambda: page.find_elements("css selector", "#telemetry tbody tr"), "telemetry rows")
    assert '"seq"' in rows[0].text
    chart = '#charts .chart[data-field="seq"]'
    first = int(_until(page, lambda: page.find_element("css selector", chart).get_attribute("data-points"),
                       "a chart of seq"))
    assert page.find_elements("css selector", chart + " canvas"), "the chart has no canvas"
    for field in ("free_heap", "uptime"):
        assert page.find_elements("css selector", f'#charts .chart[data-field="{field}"]'), field
    _until(page, lambda: int(page.find_element("css selector", chart).get_attribute("data-points")) >= first + 3,
           "the seq chart growing")
    count = page.find_element("css selector", f'#devices tr[data-id="{DEVICE}"] td.count')
    assert int(count.text) >= first + 3


def test_a_method_invoked_from_the_page_returns_its_status(page):
    page.find_element("css selector", f'#devices tr[data-id="{DEVICE}"]').click()
    # The name field offers the methods the device reports it answers.
    offered = _until(page, lambda: {o.get_attribute("value") for o in
                                    page.find_elements("css selector", "#method-names option")},
                     "the device's reported methods")
    assert {"ping", "set_interval", "reboot"} <= offered, offered
    name = page.find_element("id", "method-name")
    name.clear()
    name.send_keys("ping")
    page.find_element("id", "invoke").click()
    result = _until(page, lambda: page.find_element("id", "method-result").get_attribute("data-status") and
                    page.find_element("id", "method-result"), "the method's answer")
    assert result.get_attribute("data-status") == "200" and "pong" in result.text
    name.clear()
    name.send_keys("no_such_method")
    page.find_element("id", "invoke").click()
    _until(page, lambda: page.find_element("id", "method-result").get_attribute("data-status") == "404",
           "404 for an unknown method")


def test_a_desired_patch_from_the_page_comes_back_reported(page, web_gateway):
    page.find_element("css selector", f'#devices tr[data-id="{DEVICE}"]').click()
    box = page.find_element("id", "desired-patch")
    box.clear()
    box.send_keys("{not json")
    # Clicked again if a busy machine swallowed the click: bad JSON is never sent, however often.
    for attempt in range(4):
        page.find_element("id", "send-desired").click()
        try:
            _until(page, lambda: "not JSON" in page.find_element("id", "desired-result").text,
                   "the JSON error", timeout=5)
            break
        except AssertionError:
            if attempt == 3:
                raise
    before = hub.get_twin(web_gateway.data, DEVICE)["desired"]["$version"]
    assert before == hub.get_twin(web_gateway.data, DEVICE)["desired"]["$version"], "bad JSON was sent"
    box.clear()
    box.send_keys('{"interval": 0.75}')
    page.find_element("id", "send-desired").click()
    _until(page, lambda: page.find_element("id", "desired-result").get_attribute("data-status") == "200",
           "the desired update accepted")
    _until(page, lambda: '"interval": 0.75' in page.find_element("id", "reported").text,
           "interval 0.75 reported by the device")
    assert "0.75" in page.find_element("id", "reported-change").text
    assert hub.get_twin(web_gateway.data, DEVICE)["reported"]["interval"] == 0.75


def test_a_c2d_message_sent_from_the_page_arrives(page, device, tmp_path):
    page.find_element("css selector", f'#devices tr[data-id="{DEVICE}"]').click()
    body = page.find_element("id", "c2d-body")
    body.clear()
    body.send_keys("hello-web")
    props = page.find_element("id", "c2d-props")
    props.clear()
    props.send_keys('{"cmd": "blink"}')
    page.find_element("id", "send-c2d").click()
    device.wait_log(r"C2D message, 9 bytes, properties .*'cmd': 'blink'")
    _until(page, lambda: page.find_elements("css selector", '#c2d-list li[data-state="delivered"]'),
           "the message as delivered")
    # The docs' picture (docs/img/gateway-web.png) is this one: EDGEKIT_WEB_SCREENSHOT=that path.
    page.execute_script("window.scrollTo(0, 0)")
    shot = os.environ.get("EDGEKIT_WEB_SCREENSHOT") or str(tmp_path / "gateway-web.png")
    assert page.save_screenshot(shot) and os.path.getsize(shot) > 10_000


def test_demo_with_web_prints_the_url_and_keeps_the_page_live_until_stopped(tmp_path):
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "demo", "--web", "--workdir", str(tmp_path / "demo")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("web view: "):
                break
        url = lines[-1].split(": ", 1)[1].strip() if lines and lines[-1].startswith("web view: ") else None
        assert url, "demo --web printed no URL:\n" + "".join(lines[-20:])
        base, token = url.split("/?token=")
        status, state = _request(base + "/api/state?token=" + token)
        dev = [d for d in state["devices"] if d["id"] == "demo-device"][0]
        assert status == 200 and dev["connected"] and dev["messages"] >= 5
        assert state["telemetry"]["demo-device"][-1]["json"]["seq"] >= 5
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest[-2000:]
    assert "nothing left running" in rest


def _prototype_named_device(web_gateway):
    from gateway_helpers import MqttDevice
    from azure_edge import topics
    dev = MqttDevice.from_connection_string(web_gateway, web_gateway.add_device("constructor"))
    assert dev.connect() == 0
    for n in range(3):  # a field named like an Object.prototype member, and an ordinary one
        dev.publish(topics.telemetry("constructor"), json.dumps({"toString": n, "seq": n}).encode())
    return dev


def test_a_device_named_constructor_with_a_field_named_tostring_is_shown(page, web_gateway):
    dev = _prototype_named_device(web_gateway)
    try:
        row = _until(page, lambda: page.find_elements("css selector", '#devices tr[data-id="constructor"]'),
                     "the row of a device named constructor")
        row[0].click()
        _until(page, lambda: page.find_elements("css selector", '#charts .chart[data-field="toString"]'),
               "a chart of the field toString")
        assert page.find_element("id", "desired-version").text == "$version 1"  # the twin panel works
        errors = [e["message"] for e in page.get_log("browser") if e.get("level") == "SEVERE" and "favicon" not in e["message"]]
        assert errors == [], errors
    finally:
        dev.close()


def test_the_page_state_stays_small_whatever_the_devices_send(web_gateway):
    from gateway_helpers import MqttDevice
    from azure_edge import topics
    dev = MqttDevice.from_connection_string(web_gateway, web_gateway.add_device("bulky"))
    assert dev.connect() == 0
    try:
        for n in range(40):  # 40 messages of 245 KB: 9.8 MB of telemetry
            body = json.dumps({"seq": n, "blob": "b" * 245_000}).encode()
            dev.publish(topics.telemetry("bulky"), body)
    finally:
        dev.close()
    headers = {"X-Edgekit-Token": web_gateway.token}
    deadline = time.monotonic() + 10
    while True:
        req = urllib.request.Request(web_gateway.base + "/api/state", headers=headers)
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
        bulky = json.loads(raw)["telemetry"].get("bulky", [])
        if len(bulky) == 40 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert len(bulky) == 40
    assert [r["json"]["seq"] for r in bulky] == list(range(40))  # the numbers the charts need
    assert all(len(r["body"]) <= 2100 for r in bulky)  # bodies cut at 2 KB
    assert len(raw) < 1_000_000, len(raw)


def test_the_upstream_switch_shows_the_state_and_holds_telemetry(page, web_gateway):
    # Issue 26: the page shows whether the gateway reaches IoT Hub, and its switch cuts and restores it.
    badge = lambda: page.find_element("id", "upstream")  # noqa: E731
    _until(page, lambda: badge().get_attribute("data-state") == "online", "upstream online")
    try:
        page.find_element("id", "upstream-switch").click()
        _until(page, lambda: badge().get_attribute("data-state") == "offline", "upstream offline")
        assert hub.upstream(web_gateway.data)["upstream"] == "offline"
        _until(page, lambda: re.search(r"offline: [1-9]\d* held", badge().text), "held messages counted")
        page.find_element("id", "upstream-switch").click()
        _until(page, lambda: badge().get_attribute("data-state") == "online", "upstream online again")
        assert hub.upstream(web_gateway.data)["held"] == 0
    finally:
        hub.upstream(web_gateway.data, "online")
    token = {"X-Edgekit-Token": web_gateway.token, "Content-Type": "application/json"}
    status, answer = _request(web_gateway.base + "/api/upstream", "POST", token, {"state": "sideways"})
    assert status == 200 and answer["status"] == 400
    cookie = {"Cookie": "edgekit_web=" + web_gateway.token, "Content-Type": "application/json"}
    assert _request(web_gateway.base + "/api/upstream", "POST", cookie, {"state": "offline"})[0] == 401
