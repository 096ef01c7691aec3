# The default firmware's loop (firmware/main.py, code.py): a reading every interval, built
# on the device API. Apart from app.py so that API users do not carry it in their heap.
import time

from azure_edge import log
from azure_edge.device import Device


def run(read_sensors=None, bundle_path=None):
    """Send uptime, free heap, RSSI, CPU temperature and read_sensors()'s dict every interval."""
    dev = Device(bundle_path)
    port = dev.port
    seq = [0]
    begin = time.time()

    def reading():
        seq[0] += 1
        r = {"seq": seq[0], "uptime": int(time.time() - begin), "free_heap": port.free_heap(),
             "rssi": port.rssi(), "temperature": port.cpu_temperature()}
        if read_sensors:
            try:
                r.update(read_sensors() or {})
            except Exception as e:
                log("read_sensors failed: %r" % e)
        try:
            dev.send(r)
        except ValueError as e:
            log("reading not sent: %s" % e)

    dev.every(None, reading)
    dev.run()
