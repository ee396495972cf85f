"""How a run stops on Ctrl-C or SIGTERM, and why a stop is also remembered, not only raised.

:func:`install` makes the first SIGINT or SIGTERM raise ``KeyboardInterrupt`` or :class:`Terminated` where it
lands; the training loop holds it to the next step boundary (:class:`core.train.StepBoundarySignals`). A raise
can be lost: Python runs a handler between any two bytecodes, and one that raises while the interpreter runs a
callback it cannot propagate from (a weakref callback, such as the module locks' of an import; a ``__del__``)
is printed ("Exception ignored in ...") and dropped. The run would then go on to its end although it was told
to stop. So the handler also records the stop, and the run calls :func:`raise_if_stopped` between its phases,
which raises it again when it was lost.
"""
from __future__ import annotations

import signal

from sacred.utils import SacredInterrupt

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_stop: int | None = None  # the signal that stopped this run, once one has


class Terminated(SacredInterrupt):
    """SIGTERM: stop like Ctrl-C, with a final checkpoint, and leave the run INTERRUPTED."""

    STATUS = "INTERRUPTED"


def install() -> None:
    """Stop on the first SIGINT or SIGTERM; a SIGINT ignored from the start (a background job's) stays ignored."""
    global _stop
    _stop = None
    for stop_signal in STOP_SIGNALS:
        if signal.getsignal(stop_signal) is not signal.SIG_IGN:
            signal.signal(stop_signal, _stop_once)


def _stop_once(signum, frame) -> None:
    """The first signal stops the run; the ones after it are ignored, so that a second signal (a sweep's SIGTERM
    after the terminal's Ctrl-C reached both) cannot cut its final checkpoint or record short."""
    global _stop
    _stop = signum
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, signal.SIG_IGN)
    raise _exception(signum)


def raise_if_stopped() -> None:
    """Raise the stop this run was sent, if one came and its raise was lost (it is called where, had the raise
    gone through, the run would not be)."""
    if _stop is not None:
        raise _exception(_stop)


def _exception(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated()
