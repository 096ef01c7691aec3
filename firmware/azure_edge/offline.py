# The console's status line while the gateway is away (azure_edge.device loads it once a
# minute, then unloads it).
import time

from adafruit_ticks import ticks_diff, ticks_ms


def status(dev):
    """'offline for ...; N readings queued; next retry in ...; [IDF heap ...; ]last error: ...'."""
    c = dev.client
    retry = max(0, ticks_diff(c._retry_at, ticks_ms()) // 1000)
    idf = dev.port.idf_heap()  # esp32 only: the heap TLS needs to reconnect
    return ("offline for %d s; %d readings queued; next retry in %d s; %slast error: %s"
            % (time.time() - dev.offline_at, len(c.outbox), retry,
               "IDF heap %(free)d B free, largest block %(largest_block)d B; " % idf if idf else "",
               c.last_error or "none"))
