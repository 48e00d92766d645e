"""Resolves the futures of async calls on their event loop (see src/completions.rs).

Each event loop gets one pump: a pipe watched with ``loop.add_reader`` and the
native queue of outcomes behind it. ``start`` makes the future of one call;
when the call ends, the loop wakes, drains every outcome at once and resolves
the futures, still on its own thread.
"""

import asyncio
import itertools
import os
import weakref

from ._native import Completions

_pumps = weakref.WeakKeyDictionary()
_tokens = itertools.count()


class _Pump:
    def __init__(self, loop):
        self.completions = Completions()
        self.futures = {}
        self.fd = self.completions.fileno()
        os.set_blocking(self.fd, False)
        loop.add_reader(self.fd, self._drain)

    def _drain(self):
        try:
            os.read(self.fd, 4096)
        except BlockingIOError:
            pass
        for token, ok, value in self.completions.take():
            future = self.futures.pop(token, None)
            if future is None or future.done():
                continue  # cancelled meanwhile: nobody awaits it
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)


def start():
    """(completions, token, future) for a new call on the running loop."""
    loop = asyncio.get_running_loop()
    pump = _pumps.get(loop)
    if pump is None or loop.is_closed():
        pump = _pumps[loop] = _Pump(loop)
    token = next(_tokens)
    future = loop.create_future()
    pump.futures[token] = future
    return pump.completions, token, future
