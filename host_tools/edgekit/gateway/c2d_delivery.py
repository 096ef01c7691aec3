"""Cloud-to-device delivery, as IoT Hub does it: the sender's call ends once the message is queued.

IoT Hub's "send C2D" answers as soon as the message is in the device's queue (at most 50 of them:
403 DeviceMaximumQueueDepthExceeded past that, IoT Hub quotas); delivery and the device's
completion happen later, and the sender learns of them by asking (here `state()`, which
`edgekit gateway c2d-state` and `send-c2d --wait` read). So a device that never acknowledges
holds nothing on the hub side but its own queue: one delivery task per device sends the oldest
queued message and waits for its PUBACK; the message leaves the queue only then
(edgeHub's `DeviceMessageHandler.ProcessMessageFeedbackAsync` completes it on the device's ack).
"""
import asyncio
from collections import OrderedDict

MAX_QUEUED = 50  # IoT Hub: cloud-to-device messages queued per device
_OUTCOMES = 10_000  # how many finished messages' states are remembered (oldest forgotten first)

QUEUED = "queued"
DELIVERED = "delivered"
EXPIRED = "expired"
UNKNOWN = "unknown"


class Delivery:
    """One delivery task per device; states of the messages that left the queue."""

    def __init__(self, send_next):
        # send_next(device_id): an awaitable that delivers the oldest queued message and returns
        # True once it is acknowledged, False when there is nothing to send now (none queued, the
        # device away or not subscribed, the link closed).
        self._send_next = send_next
        self._tasks = {}  # device id -> its delivery task
        self._again = set()  # devices whose queue changed while their task ran
        self.outcomes = OrderedDict()  # (device, mid) -> DELIVERED or EXPIRED

    def kick(self, device_id):
        """Make sure the device's queue is being delivered (after a send, a subscribe, a resume)."""
        task = self._tasks.get(device_id)
        if task is not None and not task.done():
            self._again.add(device_id)
            return
        self._tasks[device_id] = asyncio.ensure_future(self._run(device_id))

    async def _run(self, device_id):
        try:
            while True:
                self._again.discard(device_id)
                while await self._send_next(device_id):
                    pass
                if device_id not in self._again:
                    return
        finally:
            if self._tasks.get(device_id) is asyncio.current_task():
                del self._tasks[device_id]

    def finished(self, device_id, mid, outcome):
        """Remember how a message left the queue."""
        self.outcomes[(device_id, mid)] = outcome
        self.outcomes.move_to_end((device_id, mid))
        while len(self.outcomes) > _OUTCOMES:
            self.outcomes.popitem(last=False)

    def forget(self, device_id):
        """A removed device: its messages' states go with it."""
        for key in [k for k in self.outcomes if k[0] == device_id]:
            del self.outcomes[key]

    def state(self, device_id, mid, queued_mids):
        """queued, delivered, expired or unknown (never sent here, or forgotten)."""
        if mid in queued_mids:
            return QUEUED
        return self.outcomes.get((device_id, mid), UNKNOWN)

    def stop(self):
        """Cancel the delivery tasks (the gateway is stopping; the queue stays on disk)."""
        for task in self._tasks.values():
            task.cancel()
