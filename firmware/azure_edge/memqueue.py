# A bounded RAM queue with the outbox's interface, for when no flash store is configured.
# Readings queued here do not survive a reset.


class MemoryQueue:
    def __init__(self, max_bytes=8192):
        self.max_bytes = max_bytes
        self.items = []
        self.bytes = 0
        self.dropped = 0

    def append(self, data):
        self.items.append(bytes(data))
        self.bytes += len(data)
        while self.bytes > self.max_bytes and len(self.items) > 1:
            self.bytes -= len(self.items.pop(0))
            self.dropped += 1

    def peek(self):
        return self.items[0] if self.items else None

    def records(self):
        for r in self.items[:]:
            yield r

    def pop(self, count=1):
        if not 0 < count <= len(self.items):
            raise IndexError("pop %d from a queue of %d" % (count, len(self.items)))
        for r in self.items[:count]:
            self.bytes -= len(r)
        del self.items[:count]

    def __len__(self):
        return len(self.items)
