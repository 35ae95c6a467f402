"""The process's stop request: what SIGINT and SIGTERM ask of long work.

A training run installs :func:`catch_stop_signals`; the first signal only
records a request. Work that can take minutes between iterations (sampling,
validation, latent caching, class images) calls
:func:`raise_if_stop_requested` at each denoising step or batch, so that it
gives up within seconds and the runner can save the last finished iteration
before a cluster's grace period runs out. A second signal exits at once.

With several processes, the runner's checks agree on stopping through a
collective, so all stop at the same iteration. Only the main process
samples; the others wait in the next check, which it reaches within a
denoising step of its signal. Schedulers and terminals signal every process
(torchrun also passes a signal on to its workers). A signal that reaches
only another process while the main one samples is taken up when the
samples are done.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# The same signal again within this many seconds counts once.
SAME_SIGNAL_SECONDS = 1.0

# The signal number of the first stop signal, 0 while none came, and when
# it was recorded.
_requested = 0
_requested_at = 0.0


class StopRequested(BaseException):
    """Raised by :func:`raise_if_stop_requested` once a stop was requested.

    A ``BaseException``, as ``KeyboardInterrupt``, so that no ``except
    Exception`` on the way (a skipped bad image, a fallback) swallows it.

    Args:
        signum (int): The signal that asked to stop.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"stop requested by {signal.Signals(signum).name}")
        self.signum = signum


def request_stop(signum: int) -> None:
    """Record that ``signum`` asked this process to stop (0 clears it)."""
    global _requested, _requested_at
    _requested = signum
    _requested_at = time.monotonic()


def stop_requested() -> int:
    """The signal number that asked to stop, or 0."""
    return _requested


def raise_if_stop_requested() -> None:
    """Raise :class:`StopRequested` once a stop was requested.

    Cheap (a global read): long loops call it at every step or batch.
    """
    if _requested:
        raise StopRequested(_requested)


def exit_now(signum: int) -> None:
    """Leave the process at once with status ``128 + signum``.

    ``os._exit`` runs no ``finally`` blocks, atexit handlers or buffered
    writes, so that nothing new is written; a save in flight leaves only its
    temporary file, which the next run removes.
    """
    name = signal.Signals(signum).name
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"\ndiffengine: {name} while stopping: exiting at "
                         "once, without saving\n")
        sys.stderr.flush()
    os._exit(128 + signum)


@contextlib.contextmanager
def catch_stop_signals(on_request: Callable[[int], None] = lambda s: None
                       ) -> Iterator[None]:
    """SIGINT and SIGTERM request a stop inside the block; a second exits.

    The same signal again within ``SAME_SIGNAL_SECONDS`` is not a second
    one: under torchrun, a worker gets a terminal's or scheduler's signal
    both directly and forwarded by torchrun.

    The request is cleared on entry and on exit, so that a process that
    trains twice (tests) starts each run without one.

    Args:
        on_request (Callable[[int], None]): Called with the signal number of
            the first signal, e.g. to log it. Defaults to doing nothing.
    """
    def handler(signum, frame):
        if _requested:
            # torchrun passes on to its workers the signal that a terminal
            # or a scheduler already sent to every process: the same signal
            # within a second is that copy, not a second request.
            if (signum == _requested and time.monotonic() - _requested_at
                    < SAME_SIGNAL_SECONDS):
                return
            exit_now(signum)
        request_stop(signum)
        on_request(signum)

    request_stop(0)
    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
        request_stop(0)

