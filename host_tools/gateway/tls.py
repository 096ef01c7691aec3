"""The gateway's TLS listener: the one place that knows how client certificates reach the MQTT head.

The protocol head starts its listener with start_server() and asks peer_chain() for what the
device presented; how the TLS layer accepts client certificates stays behind these two calls.
"""
import asyncio


async def start_server(handler, host, port, ctx, **kwargs):
    """Listen on host:port with TLS context `ctx`; `handler(reader, writer)` runs per connection."""
    return await asyncio.start_server(handler, host, port, ssl=ctx, **kwargs)


def peer_chain(writer):
    """The certificates the client presented, as DER, leaf first; [] when it presented none."""
    ssl_object = writer.get_extra_info("ssl_object")
    leaf = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return [leaf] if leaf else []
