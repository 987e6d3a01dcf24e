"""Running one of the local cluster's asyncio servers in a thread of its own.

The supervisor runs the Service proxies, the X-Ray collector and the mail server
in its one event loop. Tests and `canarylab listen`-style scripts want a single
one of them, started and stopped around a block of ordinary code: that is
`serve_in_thread`, and `ThreadRunnable.run_in_thread` for the two stand-ins.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def serve_in_thread(component, timeout: float = 10.0) -> Iterator:
    """Run ``component`` (anything with async start() and stop()) in a thread.

    The thread has an event loop of its own. Entering returns only once
    ``start()`` has finished, so the component is bound and listening, and it
    re-raises whatever ``start()`` raised; leaving runs ``stop()`` and joins the
    thread. This is what pytest fixtures use, e.g.
    ``with MailSink.run_in_thread("127.0.0.1", 0) as sink: ...``.
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=_run_loop, args=(loop,), daemon=True,
                              name=f"canarylab-{type(component).__name__}")
    thread.start()
    try:
        _call_in_loop(loop, component.start(), timeout)
        try:
            yield component
        finally:
            _call_in_loop(loop, component.stop(), timeout)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        loop.close()


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    loop.run_forever()
    # Threads that asyncio.to_thread() started (MailSink's certificate) end here.
    loop.run_until_complete(loop.shutdown_default_executor())


def _call_in_loop(loop: asyncio.AbstractEventLoop, coro, timeout: float):
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise


class ThreadRunnable:
    """For servers built as ``cls(host, port, **options)`` with async start()/stop()."""

    host: str
    port: int

    @classmethod
    def run_in_thread(cls, host: str = "127.0.0.1", port: int = 0, **options):
        """``with XRayCollector.run_in_thread("127.0.0.1", 0) as collector:``

        Listening when the block starts (``port=0`` picks a free port, then
        ``.port`` holds it), stopped when it ends.
        """
        return serve_in_thread(cls(host, port, **options))

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port
