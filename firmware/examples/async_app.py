# Shows: an asyncio app doing its own work (here a display refresh) while the device serves
# its link: device.run_async() yields to the other tasks between steps.
# Needs: a deployed bundle; asyncio (MicroPython has it; on CircuitPython install asyncio and
# adafruit_ticks from the bundle). Each message says how often the display task has run
# meanwhile: {"frames": N}.
import sys

sys.path.append("/lib")  # a board's /lib; harmless elsewhere

from azure_edge import start  # noqa: E402

start.boot()  # first: an installed update runs instead (docs/updates.md)

import asyncio  # noqa: E402

from azure_edge.device import Device  # noqa: E402

device = Device()
frames = [0]


async def display():
    while True:
        frames[0] += 1  # on a board: draw on the screen here
        await asyncio.sleep(0.1)


async def report():
    while True:
        await asyncio.sleep(1)
        device.send({"frames": frames[0]})


async def main():
    asyncio.create_task(display())
    asyncio.create_task(report())
    await device.run_async()


asyncio.run(main())
