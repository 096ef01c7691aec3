"""The board's memory as the device reports it, under CPython and the real MicroPython.

On esp32 the device reports the IDF heap beside its Python heap: free bytes and the largest
free block of `esp32.idf_heap_info(esp32.HEAP_DATA)`, where mbedTLS's record buffers, Wi-Fi
and lwIP allocate. The unix port has no `esp32` module and no IDF heap (its mbedTLS allocates
with libc's calloc), so the esp32 adapter runs here with a stand-in `esp32` whose regions the
test sets, in the (total, free, largest free block, minimum free) shape of
ports/esp32/modesp32.c; the twin report and the offline status line are checked both with an
adapter that has figures and with the host's, which has none.
"""
import os
import re

import pytest

import adafruit_ticks

# MicroPython finds MiniMQTT's clock (adafruit_ticks, which twin.py and offline.py import) where
# pip put it for CPython; appended, so azure_edge still comes from firmware/.
PRELUDE = """
import sys
if sys.implementation.name == 'micropython' and TICKS not in sys.path:
    sys.path.append(TICKS)
class Obj:
    pass
""".replace("TICKS", repr(os.path.dirname(adafruit_ticks.__file__)))

# Two data regions with room and one full: what idf_heap_info(HEAP_DATA) gives on a board.
REGIONS = [(100000, 40000, 30000, 20000), (50000, 12000, 11000, 9000), (8000, 0, 0, 0)]


def run(fw, code):
    return fw.run(PRELUDE + code)


ESP32_ADAPTER = """
class Esp32:  # stands in for esp32, machine and network: idf_heap() needs only the first
    HEAP_DATA = 4  # MALLOC_CAP_8BIT, as on the esp32 port
    asked = []
    @staticmethod
    def idf_heap_info(caps):
        Esp32.asked.append(caps)
        return REGIONS
saved = dict((k, sys.modules.get(k)) for k in ('esp32', 'machine', 'network'))
for k in saved:
    sys.modules[k] = Esp32
sys.modules.pop('azure_edge.port_esp32', None)
try:
    from azure_edge import port_esp32
    result = [port_esp32.idf_heap(), Esp32.asked]
finally:
    for k in saved:
        sys.modules.pop(k)
        if saved[k] is not None:
            sys.modules[k] = saved[k]
    sys.modules.pop('azure_edge.port_esp32', None)
"""


@pytest.mark.parametrize("regions, expected", [
    (REGIONS, {"free": 52000, "largest_block": 30000}),  # free summed, the largest of any
    ([], {"free": 0, "largest_block": 0}),
])
def test_esp32_adapter_sums_free_and_takes_the_largest_block(fw, regions, expected):
    heap, asked = run(fw, "REGIONS = %r\n" % regions + ESP32_ADAPTER)
    assert heap == expected and asked == [4]


def test_the_host_adapter_has_no_idf_heap(fw):
    assert run(fw, "from azure_edge import port_host\nresult = port_host.idf_heap()") is None


CLIENT = """
c = Obj()
c.info = {'firmware': '0.1.0', 'board': 'devkitc', 'runtime': 'r', 'rssi': None}
c.interval = 10
c.outbox = [b'a', b'b']
c.set_aside = 0
c.methods = {'ping': None}
"""


def test_twin_reports_the_idf_heap_beside_free_heap(fw):
    # app.start puts the adapter's idf_heap function in info; each report calls it.
    reports = run(fw, CLIENT + """
from azure_edge import twin
figures = [{'free': 52000, 'largest_block': 30000}, {'free': 51000, 'largest_block': 29000}]
c.info['idf_heap'] = lambda: figures.pop(0)
result = [twin.device_report(c), twin.device_report(c)]
""")
    assert [r["idf_heap"] for r in reports] == [{"free": 52000, "largest_block": 30000},
                                                {"free": 51000, "largest_block": 29000}]
    assert reports[0]["queued"] == 2 and "free_heap" in reports[0]


@pytest.mark.parametrize("info", ["", "c.info['idf_heap'] = port_host.idf_heap"])
def test_twin_reports_null_without_an_idf_heap(fw, info):
    # The host adapter's function, or none in info: null, as rssi and free_heap where absent.
    rep = run(fw, CLIENT + "from azure_edge import port_host, twin\n" + info
              + "\nresult = twin.device_report(c)")
    assert "idf_heap" in rep and rep["idf_heap"] is None and rep["rssi"] is None


DEVICE = """
import time
from adafruit_ticks import ticks_add, ticks_ms
from azure_edge import offline
dev = Obj()
dev.client = Obj()
dev.client._retry_at = ticks_add(ticks_ms(), 5500)
dev.client.outbox = [b'a', b'b', b'c']
dev.client.last_error = 'connection refused'
dev.offline_at = time.time() - 61
dev.port = Obj()
"""


def test_offline_status_line_carries_the_idf_heap(fw):
    line = run(fw, DEVICE + "dev.port.idf_heap = lambda: {'free': 52000, 'largest_block': 30000}\n"
                            "result = offline.status(dev)")
    assert re.fullmatch(r"offline for 6[12] s; 3 readings queued; next retry in [45] s; "
                        r"IDF heap 52000 B free, largest block 30000 B; "
                        r"last error: connection refused", line), line


def test_offline_status_line_without_an_idf_heap(fw):
    line = run(fw, DEVICE + "dev.port.idf_heap = lambda: None\nresult = offline.status(dev)")
    assert re.fullmatch(r"offline for 6[12] s; 3 readings queued; next retry in [45] s; "
                        r"last error: connection refused", line), line
