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
    # The cache on a free port (80 on a gateway): the Device Update test deploys through it.
    gw = GatewayProcess(tmp_path_factory.mktemp("webgw"), devices=(), extra=["--web", "--cache-port", "0"])
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
        body = e.read()
        return e.code, json.loads(body or b"null") if "json" in e.headers.get("Content-Type", "") else body.decode()


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
    assert not page.find_element("id", "pick-hint").is_displayed(), "the 'Pick a device' hint stayed after a pick"
    # Read in one script: the table is re-rendered as readings arrive, and an element found in
    # one call can be gone by the next (a StaleElementReferenceException on a loaded machine).
    row = _until(page, lambda: page.execute_script(
        "const r = document.querySelector('#telemetry tbody tr'); if (!r) return null;"
        " const c = r.querySelector('td'); return {text: r.innerText, iso: c.title, cell: c.innerText,"
        " local: new Date(c.title).toLocaleString()};"), "telemetry rows")
    assert '"seq"' in row["text"]
    # Times in the browser's zone, the UTC original in the cell's title.
    assert row["iso"].endswith("Z") and row["cell"] == row["local"], row
    # Counters are offered, not charted, until picked; whatever is charted by default is sensor-like.
    box = lambda name: page.find_element("css selector", f'#fields input[data-field="{name}"]')  # noqa: E731
    _until(page, lambda: box("seq") and box("uptime") and box("free_heap"), "the counters offered as fields")
    charted = {e.get_attribute("data-field") for e in page.find_elements("css selector", "#charts .chart")}
    assert not charted & {"seq", "uptime", "free_heap"}, charted
    if not charted:  # the host's board has no sensor: the page says why nothing is drawn
        assert "tick one to chart it" in page.find_element("id", "fields-hint").text
    assert not box("seq").is_selected()
    box("seq").click()
    chart = '#charts .chart[data-field="seq"]'
    first = int(_until(page, lambda: page.find_element("css selector", chart).get_attribute("data-points"),
                       "a chart of seq once picked"))
    assert page.find_elements("css selector", chart + " canvas"), "the chart has no canvas"
    assert "fields=" in page.current_url and "seq" in page.current_url.split("fields=")[1]
    _until(page, lambda: int(page.find_element("css selector", chart).get_attribute("data-points")) >= first + 3,
           "the seq chart growing")
    _until(page, lambda: int(page.find_element("css selector", f'#devices tr[data-id="{DEVICE}"] td.count').text)
           >= first + 3, "the device's count following the chart")
    box("seq").click()
    _until(page, lambda: not page.find_elements("css selector", chart), "the seq chart gone once unpicked")
    box("seq").click()  # picked again: the docs' picture shows it


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
    # The next call's answer replaces the old error; both calls stay in the history, newest first.
    name.clear()
    name.send_keys("ping")
    page.find_element("id", "invoke").click()
    result = _until(page, lambda: page.find_element("id", "method-result").get_attribute("data-status") == "200" and
                    page.find_element("id", "method-result"), "the second ping's answer")
    assert "404" not in result.text and "error" not in result.get_attribute("class")
    history = [r.get_attribute("data-status") for r in page.find_elements("css selector", "#method-history tbody tr")]
    assert history[:3] == ["200", "404", "200"], history
    assert "no_such_method" in page.find_elements("css selector", "#method-history tbody tr")[1].text


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
        dev.publish(topics.telemetry("constructor", properties={"toString": "p"}),
                    json.dumps({"toString": n, "seq": n}).encode())
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
        # A property named like a prototype member is the device's own, shown without the system switch.
        _until(page, lambda: "toString=p" in page.find_element("css selector", "#telemetry tbody tr td:nth-child(3)").text,
               "the property toString as an application property")
        errors = [e["message"] for e in page.get_log("browser") if e.get("level") == "SEVERE"]  # a favicon 404 too
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


# --- what IoT Explorer does, for the local gateway (issue 27) ---------------------------------------

def _click_until(page, button_id, predicate, what):
    # A click a busy machine swallowed is clicked again; every control here is safe to repeat.
    for attempt in range(3):
        page.find_element("id", button_id).click()
        try:
            return _until(page, predicate, what, timeout=8)
        except AssertionError:
            if attempt == 2:
                raise


def _select(page, device_id):
    page.find_element("css selector", f'#devices tr[data-id="{device_id}"]').click()
    _until(page, lambda: page.find_element("id", "sel-name").text == device_id, f"{device_id} selected")


def test_the_favicon_is_served_and_the_no_token_page_is_a_page(web_gateway):
    with urllib.request.urlopen(web_gateway.base + "/favicon.ico", timeout=10) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("image/svg+xml")
        assert b"<svg" in r.read()
    status, body = _request(web_gateway.base + "/")
    assert status == 401 and body.startswith("<!doctype html>") and "access token" in body and "?token=" in body
    status, body = _request(web_gateway.base + "/api/state")  # scripts still get JSON
    assert status == 401 and "token" in body["error"]


def test_a_device_added_from_the_page_shows_its_keys_only_when_asked_and_can_be_deleted(page, web_gateway):
    from edgekit.gateway import registry
    base, token = web_gateway.base, web_gateway.token
    # Adding a device or reading a key needs the token in a header: the cookie alone is refused.
    cookie = {"Cookie": "edgekit_web=" + token, "Content-Type": "application/json"}
    for path in ("/api/device/add", "/api/secret", "/api/device/remove"):
        assert _request(base + path, "POST", cookie, {"device": DEVICE})[0] == 401, path
        evil = dict(cookie, **{"X-Edgekit-Token": token, "Origin": "http://evil.example"})
        assert _request(base + path, "POST", evil, {"device": DEVICE})[0] == 403, path

    if not page.find_element("id", "add-id").is_displayed():
        page.find_element("css selector", "#add-box summary").click()
    page.find_element("id", "add-id").send_keys("web-added")
    _click_until(page, "add-device", lambda: page.find_element("id", "sel-name").text == "web-added",
                 "the added device selected")
    assert page.find_elements("css selector", '#devices tr[data-id="web-added"]')
    cs = registry.show_connection_string(web_gateway.data, "web-added")
    key = registry.lookup(registry.load(web_gateway.data), "web-added").key
    assert cs and key in cs
    values = lambda: [e.text for e in page.find_elements("css selector", "#secrets td.value")]  # noqa: E731
    assert values() and all(v.startswith("••••") for v in values()), values()
    assert key not in page.page_source, "a key reached the page before it was asked for"
    # Copy puts the connection string on the clipboard without unmasking it.
    page.execute_cdp_cmd("Browser.grantPermissions", {"origin": base, "permissions": [
        "clipboardReadWrite", "clipboardSanitizedWrite"]})
    copy = '#secrets tr[data-secret="connection_string"] button.copy'
    page.find_element("css selector", copy).click()
    _until(page, lambda: page.find_element("css selector", copy).get_attribute("data-copied") == "1", "Copied")
    pasted = page.execute_async_script("navigator.clipboard.readText().then(arguments[0], (e) => arguments[0]('' + e))")
    assert pasted == cs
    assert all(v.startswith("••••") for v in values())
    _click_until(page, "show-secrets", lambda: key in values(), "the primary key shown")
    assert cs in values()
    assert key not in web_gateway.log.read_text(), "a key was written to the gateway's log"
    _click_until(page, "show-secrets", lambda: all(v.startswith("••••") for v in values()), "the keys masked again")

    page.find_element("id", "delete-device").click()
    _click_until(page, "delete-confirm", lambda: not page.find_elements("css selector", '#devices tr[data-id="web-added"]'),
                 "the deleted device's row gone")
    assert registry.lookup(registry.load(web_gateway.data), "web-added") is None
    assert "removed web-added" in page.find_element("id", "devices-result").text
    assert page.find_element("id", "detail").get_attribute("hidden") and "device=" not in page.current_url
    # A second add of an existing id is refused with what to do, not replaced.
    page.find_element("id", "add-id").send_keys(DEVICE)
    _click_until(page, "add-device", lambda: page.find_element("id", "add-result").get_attribute("data-status") == "409",
                 "409 for an existing id")
    assert "delete it first" in page.find_element("id", "add-result").text
    page.find_element("id", "add-id").clear()
    # X.509 identities through the same API: a thumbprint checked as the CLI checks it, no key to show.
    token = {"X-Edgekit-Token": token, "Content-Type": "application/json"}
    add = {"device": "web-x509", "auth": "x509_thumbprint", "thumbprint": "12:34"}
    assert "thumbprint must be" in _request(base + "/api/device/add", "POST", token, add)[1]["error"]
    add["thumbprint"] = "ab" * 32
    assert _request(base + "/api/device/add", "POST", token, add)[1]["status"] == 200
    secret = _request(base + "/api/secret", "POST", token, {"device": "web-x509"})[1]
    assert secret["primary_thumbprint"] == "AB" * 32 and "x509=true" in secret["connection_string"]
    assert "primary_key" not in secret
    assert _request(base + "/api/device/remove", "POST", token, {"device": "web-x509"})[1]["status"] == 200
    assert _request(base + "/api/device/remove", "POST", token, {"device": "web-x509"})[1]["status"] == 404


def test_telemetry_can_be_paused_filtered_cleared_and_show_system_properties(page):
    _select(page, DEVICE)
    # Read in one script: the table is redrawn twice a second, so elements found first go stale.
    top = lambda: page.execute_script(  # noqa: E731
        "const td = document.querySelector('#telemetry tbody tr td'); return td && td.title")
    _until(page, lambda: page.find_elements("css selector", "#telemetry tbody tr"), "telemetry rows")
    _click_until(page, "tm-pause", lambda: page.find_element("id", "tm-pause").text == "Resume", "paused")
    held = top()
    _until(page, lambda: re.search(r"paused, [1-9]\d* new", page.find_element("id", "tm-status").text),
           "new messages counted while paused")
    assert top() == held, "the table moved while paused"
    _click_until(page, "tm-pause", lambda: top() != held, "the table moving again after resume")

    props = lambda: page.execute_script(  # noqa: E731
        "return [...document.querySelectorAll('#telemetry tbody tr td:nth-child(3)')].map((td) => td.textContent)")
    assert not any("iothub-connection-device-id" in p for p in props())
    page.find_element("id", "tm-system").click()
    _until(page, lambda: props() and all(f"iothub-connection-device-id={DEVICE}" in p and "iothub-enqueuedtime=" in p
                                         for p in props()), "system properties shown")
    page.find_element("id", "tm-system").click()
    _until(page, lambda: props() and not any("iothub-" in p for p in props()), "system properties hidden again")

    box = page.find_element("id", "tm-filter")
    box.send_keys("no-such-text-anywhere")
    _until(page, lambda: not page.find_elements("css selector", "#telemetry tbody tr"), "nothing matching")
    box.clear()
    box.send_keys('"seq"')
    _until(page, lambda: page.find_elements("css selector", "#telemetry tbody tr"), "the matching rows")
    box.clear()
    box.send_keys(" ")  # an input event with an empty filter: every row again
    n = page.execute_script("return document.querySelectorAll('#telemetry tbody tr').length")
    _click_until(page, "tm-clear", lambda: len(page.find_elements("css selector", "#telemetry tbody tr")) < max(n, 2),
                 "the table cleared")


def test_c2d_from_the_page_carries_message_id_correlation_id_content_type_and_expiry(page, device, web_gateway):
    _select(page, DEVICE)
    for field, value in (("c2d-body", '{"led": 1}'), ("c2d-props", "{}"), ("c2d-mid", "web-m-1"),
                         ("c2d-cid", "web-c-1"), ("c2d-ct", "application/json"), ("c2d-ce", "utf-8"),
                         ("c2d-exp", "600")):
        box = page.find_element("id", field)
        box.clear()
        box.send_keys(value)
    page.find_element("id", "send-c2d").click()
    device.wait_log(r"C2D message, 10 bytes, properties .*'\$\.mid': 'web-m-1'")
    line = [ln for ln in device.console().splitlines() if "'web-m-1'" in ln][-1]
    assert "'$.cid': 'web-c-1'" in line and "'$.ct': 'application/json'" in line and "'$.exp': '" in line, line
    _until(page, lambda: page.find_elements("css selector", '#c2d-list li[data-mid="web-m-1"][data-state="delivered"]'),
           "web-m-1 delivered")
    # The CLI's rules: an expiry in the past is refused, and so is one that is no time at all.
    for bad, why in (("-5", "already past"), ("yesterday", "not an ISO 8601 time")):
        page.find_element("id", "c2d-mid").clear()
        box = page.find_element("id", "c2d-exp")
        box.clear()
        box.send_keys(bad)
        page.find_element("id", "send-c2d").click()
        _until(page, lambda: why in page.find_element("id", "c2d-result").text, f"the refusal of expiry {bad}")
    box.clear()


def test_tags_are_edited_from_the_page_and_the_whole_twin_is_shown(page, web_gateway):
    from gateway_helpers import MqttDevice
    _select(page, DEVICE)
    box = page.find_element("id", "tags-patch")
    box.clear()
    box.send_keys('{"site": "lab", "floor": 2}')
    _click_until(page, "send-tags", lambda: page.find_element("id", "tags-result").get_attribute("data-status") == "200",
                 "the tags accepted")
    _until(page, lambda: '"site": "lab"' in page.find_element("id", "tags").text, "the tags shown")
    whole = json.loads(page.find_element("id", "twin-full").text)
    assert whole["deviceId"] == DEVICE and whole["tags"] == {"site": "lab", "floor": 2}
    assert whole["connectionState"] == "Connected" and whole["authenticationType"] == "sas"
    assert whole["properties"]["reported"]["$version"] >= 2 and "desired" in whole["properties"]
    assert hub.get_twin(web_gateway.data, DEVICE)["tags"] == {"site": "lab", "floor": 2}
    # Tags are the service side's: a device's own twin GET does not carry them.
    dev = MqttDevice.from_connection_string(web_gateway, web_gateway.add_device("tag-reader"))
    assert dev.connect() == 0
    try:
        token = {"X-Edgekit-Token": web_gateway.token, "Content-Type": "application/json"}
        status, answer = _request(web_gateway.base + "/api/tags", "POST", token, {"device": "tag-reader", "tags": {"a": 1}})
        assert answer["status"] == 200 and answer["tags"] == {"a": 1}
        dev.subscribe("$iothub/twin/res/#")
        dev.publish("$iothub/twin/GET/?$rid=7", b"")
        topic, body = dev.next_message(prefix="$iothub/twin/res/")[:2]
        assert topic.startswith("$iothub/twin/res/200/") and set(json.loads(body)) == {"desired", "reported"}, body
    finally:
        dev.close()
    status, answer = _request(web_gateway.base + "/api/tags", "POST", token, {"device": DEVICE, "tags": ["x"]})
    assert answer["status"] == 400 and "JSON object" in answer["error"]
    status, answer = _request(web_gateway.base + "/api/tags", "POST", token, {"device": DEVICE, "tags": {"big": "x" * 9000}})
    assert answer["status"] == 400 and "8192" in answer["error"]  # IoT Hub's 8 KB for tags


def test_the_selection_survives_a_reload_and_a_narrow_window_does_not_scroll_sideways(page):
    _select(page, DEVICE)
    box = lambda name: page.find_element("css selector", f'#fields input[data-field="{name}"]')  # noqa: E731
    if not _until(page, lambda: box("uptime"), "the field uptime offered").is_selected():
        box("uptime").click()
    _until(page, lambda: "uptime" in page.current_url, "the picked field in the address")
    page.refresh()
    _until(page, lambda: page.find_elements("css selector", f'#devices tr.selected[data-id="{DEVICE}"]'),
           "the device still selected after a reload")
    assert not page.find_element("id", "detail").get_attribute("hidden")
    assert not page.find_element("id", "pick-hint").is_displayed()
    _until(page, lambda: page.find_elements("css selector", '#charts .chart[data-field="uptime"]'),
           "the picked field still charted after a reload")
    size = page.get_window_size()
    try:
        page.set_window_size(400, 900)
        _until(page, lambda: page.execute_script("return window.innerWidth") <= 420, "a 400 px window")
        overflow = """
            const w = document.documentElement.clientWidth;
            if (document.documentElement.scrollWidth <= w) return null;
            const out = [...document.querySelectorAll('body *')].filter((e) => e.getBoundingClientRect().right > w + 1
                && !e.closest('.scroll')).map((e) => e.tagName + '#' + e.id + '.' + e.className);
            return [document.documentElement.scrollWidth, out.slice(0, 8)];"""
        try:  # the charts follow the window on its resize event
            _until(page, lambda: page.execute_script(overflow) is None, "no sideways scroll", timeout=5)
        except AssertionError:
            wide = page.execute_script(overflow)
            raise AssertionError(f"the page is {wide[0]} px wide in a 400 px window (it scrolls sideways): {wide[1]}")
    finally:
        page.set_window_size(size["width"], size["height"])


# --- Device Update (issue 24): the device's state and installed update, deploy and cancel ------------

DU_DEVICE = "du-dev"


def _page_read(page, script, what):
    # One script per read: the device table and the panel re-render as the gateway's state changes.
    return _until(page, lambda: page.execute_script(script), what)


def test_device_update_state_deploy_and_cancel_from_the_page(page, web_gateway, tmp_path):
    import datetime

    from edgekit import update
    from edgekit.gateway import adu
    from gateway_helpers import MqttDevice

    app = tmp_path / "app"
    app.mkdir()
    (app / "main.py").write_text("import blink\nblink.run()\n")
    (app / "blink.py").write_text("def run():\n    print('v2')\n")
    _, manifest, _ = update.create(app, tmp_path / "out", "edgekit", "blinker", "2.0", "Contoso", "ESP32")
    adu.import_update(web_gateway.data, manifest)  # what `edgekit gateway update import` does
    dev = MqttDevice.from_connection_string(web_gateway, web_gateway.add_device(DU_DEVICE))
    assert dev.connect() == 0
    try:
        assert dev.subscribe("$iothub/twin/res/#") == 1
        assert dev.subscribe("$iothub/twin/PATCH/properties/desired/#") == 1
        hub.update_tags(web_gateway.data, DU_DEVICE, {"ADUGroup": "lab"})
        # The agent's report after a failed install (state 255) with 1.0 still installed, and the
        # certificates' ends as the firmware reports them (certExpiry): the client's in 10 days.
        now = datetime.datetime.now(datetime.timezone.utc)
        soon, later = [(now + datetime.timedelta(days=d, hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ") for d in (10, 400)]
        agent = {"deviceProperties": {"manufacturer": "Contoso", "model": "ESP32",
                                      "contractModelId": "dtmi:azure:iot:deviceUpdateContractModel;2",
                                      "aduVer": "DU;agent/1.0.0"},
                 "state": 255, "workflow": {"action": 3, "id": "earlier-workflow"},
                 "installedUpdateId": json.dumps({"provider": "edgekit", "name": "blinker", "version": "1.0"}),
                 "lastInstallResult": {"resultCode": 0, "extendedResultCode": -2147024891,
                                       "stepResults": {"step_0": {"resultCode": 0, "extendedResultCode": 1}}}}
        dev.publish("$iothub/twin/PATCH/properties/reported/?$rid=1", json.dumps(
            {"deviceUpdate": {"__t": "c", "agent": agent},
             "certExpiry": {"client": soon, "roots": [later]}}))
        assert dev.next_message(prefix="$iothub/twin/res/")[0].startswith("$iothub/twin/res/204/")

        row = _page_read(page, f"""const r = document.querySelector('#devices tr[data-id="{DU_DEVICE}"]');
            if (!r) return null; const h = [...document.querySelectorAll('#devices thead th')].map(e => e.innerText);
            const u = r.cells[h.indexOf('update')], c = r.cells[h.indexOf('certificates')];
            return u.innerText.includes('failed') && {{update: u.innerText, title: u.title, cls: u.className,
              certs: c.innerText, certsCls: c.className}};""", "the device's update state in its row")
        assert row["update"] == "failed · edgekit/blinker/1.0" and row["cls"] == "failed", row
        assert "result 0, extended -2147024891" in row["title"], row  # the last result code on hover
        assert row["certs"] == "⚠ client certificate in 10 d" and row["certsCls"] == "warn", row
        # The device's own row says the same as `edgekit gateway update status` (the same function).
        assert adu.status(web_gateway.data, [DU_DEVICE])[0]["state_name"] == "failed"

        _select(page, DU_DEVICE)
        panel = _page_read(page, """const p = document.getElementById('du-panel'); if (p.hidden) return null;
            const rows = Object.fromEntries([...p.querySelectorAll('#du-status tr')]
              .map(r => [r.dataset.key, r.cells[1].innerText]));
            const opts = [...document.querySelectorAll('#du-update option')].map(o => o.value);
            return opts.length && {rows, opts, group: document.getElementById('du-deploy-group').hidden ? null
              : document.getElementById('du-group').innerText, cancel: !document.getElementById('du-cancel').hidden,
              expiry: document.getElementById('du-expiry').innerText};""", "the device's update panel")
        assert panel["opts"] == ["edgekit/blinker/2.0"] and panel["group"] == "lab" and not panel["cancel"], panel
        assert panel["rows"]["installed update"] == "edgekit/blinker/1.0" and panel["rows"]["state"] == "failed"
        assert "extended -2147024891" in panel["rows"]["last install result"] and "step_0" in panel["rows"]
        assert "client certificate expires" in panel["expiry"] and "trusted root" not in panel["expiry"], panel

        # Deploy to this device: the desired deviceUpdate.service as ADU writes it, seen over MQTT.
        page.find_element("id", "du-deploy").click()
        patch = json.loads(dev.next_message(prefix="$iothub/twin/PATCH/properties/desired/")[1])
        svc = patch["deviceUpdate"]["service"]
        assert patch["deviceUpdate"]["__t"] == "c" and svc["workflow"]["action"] == 3
        uid = json.loads(svc["updateManifest"])["updateId"]
        assert uid == {"provider": "edgekit", "name": "blinker", "version": "2.0"}
        assert svc["updateManifestSignature"].count(".") == 2 and svc["fileUrls"]
        workflow = svc["workflow"]["id"]
        _until(page, lambda: page.execute_script(
            "const r = document.getElementById('du-result'); return r.dataset.status === '200' && r.innerText;"
        ) == f"deployed edgekit/blinker/2.0 (workflow {workflow}) to {DU_DEVICE}", "the deploy's answer")

        # An active deployment offers Cancel: action 255 with the deployment's workflow id.
        _until(page, lambda: page.execute_script("return !document.getElementById('du-cancel').hidden"), "Cancel")
        page.find_element("id", "du-cancel").click()
        patch = json.loads(dev.next_message(prefix="$iothub/twin/PATCH/properties/desired/")[1])
        assert patch["deviceUpdate"]["service"]["workflow"] == {"action": 255, "id": workflow}
        assert patch["deviceUpdate"]["service"]["updateManifest"] is None
        _until(page, lambda: page.execute_script("return document.getElementById('du-cancel').hidden"
                                                 " && document.getElementById('du-result').dataset.status === '200'"),
               "Cancel gone once the cancel is sent")

        # To the group: every device tagged ADUGroup=lab (only this one here), one workflow.
        page.find_element("id", "du-deploy-group").click()
        patch = json.loads(dev.next_message(prefix="$iothub/twin/PATCH/properties/desired/")[1])
        assert patch["deviceUpdate"]["service"]["workflow"]["action"] == 3
        group_workflow = patch["deviceUpdate"]["service"]["workflow"]["id"]
        # The deployment is recorded once every twin is written: the page's answer says it was.
        _until(page, lambda: group_workflow in page.execute_script(
            "return document.getElementById('du-result').innerText"), "the group deploy's answer")
        assert adu.deployments(web_gateway.data)[DU_DEVICE]["group"] == "lab"
        _until(page, lambda: page.execute_script("return !document.getElementById('du-cancel-group').hidden"),
               "Cancel for the group")
        shot = os.environ.get("EDGEKIT_WEB_UPDATE_SCREENSHOT")
        if shot:  # docs/img/gateway-web-update.png
            size = page.get_window_size()
            page.set_window_size(1700, 1100)  # the whole row, certificates column included
            try:
                page.execute_script("window.scrollTo(0, 0);"
                                    " document.querySelector('#devices').parentNode.scrollLeft = 0")
                assert page.save_screenshot(shot)
            finally:
                page.set_window_size(size["width"], size["height"])

        # An error is one line in the panel: an update that is not imported (what a stale page could ask).
        page.execute_script("const s = document.getElementById('du-update'), o = document.createElement('option');"
                            " o.value = 'edgekit/blinker/9.9'; s.append(o); s.value = o.value;")
        page.find_element("id", "du-deploy").click()
        error = _until(page, lambda: page.execute_script(
            "const r = document.getElementById('du-result'); return r.dataset.status === '404' && r.innerText;"),
            "the refusal of an update not imported")
        assert "no imported update 'edgekit/blinker/9.9'" in error and "\n" not in error, error
    finally:
        dev.close()
    # The routes are guarded as the other POSTs: the token in a header, this server's Origin.
    url, token = web_gateway.base + "/api/update/deploy", {"X-Edgekit-Token": web_gateway.token}
    body = {"device": DU_DEVICE, "update": "edgekit/blinker/2.0"}
    assert _request(url, "POST", {"Cookie": "edgekit_web=" + web_gateway.token}, body)[0] == 401
    assert _request(url, "POST", dict(token, Origin="http://evil.example"), body)[0] == 403
    status, answer = _request(web_gateway.base + "/api/update/cancel", "POST", token, {"device": "web-dev"})
    assert answer["status"] == 404 and "no deployment to 'web-dev'" in answer["error"], answer


def test_certificate_ends_are_warned_30_days_ahead():
    import datetime

    from edgekit.gateway.web import cert_expiry
    now = datetime.datetime(2026, 12, 7, 12, 0, tzinfo=datetime.timezone.utc)
    assert cert_expiry({}, now) is None and cert_expiry({"certExpiry": "x"}, now) is None
    calm = cert_expiry({"certExpiry": {"client": None, "roots": ["2027-06-01T00:00:00Z"]}}, now)
    assert calm["warnings"] == [] and calm["first"] == "2027-06-01T00:00:00Z" and calm["short"] is None
    x = cert_expiry({"certExpiry": {"client": "2026-12-01T00:00:00Z",
                                    "roots": ["2027-01-05T11:00:00Z", "2027-01-07T13:00:00Z", "soon"]}}, now)
    assert x["warnings"] == ["client certificate expired 2026-12-01T00:00:00Z",
                             "trusted root 1 expires 2027-01-05T11:00:00Z (in 28 days)",
                             "trusted root 3: unreadable date 'soon'"], x  # root 2: 31 days, not yet
    assert x["short"] == "client certificate expired (+2)" and x["first"] == "2026-12-01T00:00:00Z"
