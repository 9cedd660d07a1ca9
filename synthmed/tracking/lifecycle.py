"""How a run ends when the user or a scheduler stops it: SIGINT (Ctrl-C) and SIGTERM.

Both signals get the same treatment, so a Ctrl-C'd run resumes as exactly as a SIGTERM'd one:

- during `fit`, the signal is handed to Lightning's SIGTERM path, which stops at the next step boundary, writes
  `on_exception.ckpt` (a consistent state: no half-done optimizer or EMA update) and raises `SIGTERMException`;
- after `fit` (the final evaluation), the signal raises `Interrupted` at once: no metrics/final.json is written,
  the run ends KILLED and `resume=` evaluates again from `final.ckpt`;
- inside `critical()` (writing the final record) it is deferred until the record is complete.

The process then exits with status 128 + signal number (130 for SIGINT, 143 for SIGTERM), as a shell reports a
process killed by that signal, so a scheduler or script never reads a stopped run as a success. A second Ctrl-C
while a graceful stop is pending stops at once (the checkpoint is then written mid-step and may not resume bit-equal).
"""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger(__name__)

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(SystemExit):
    """The run was stopped by `signum`; as a SystemExit its code is the shell's 128 + signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + int(signum))
        self.signum = int(signum)

    def __str__(self) -> str:
        return f"stopped by {signal.Signals(self.signum).name} (exit status {self.code})"


class SignalGuard:
    """SIGINT/SIGTERM handlers for one run (a context manager; restores the previous handlers on exit).

    Attributes:
        signum: the first signal received, or None.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._phase = "setup"  # setup | fit | critical | after
        self._relayed = False  # the SIGTERM we raise ourselves to hand a Ctrl-C to Lightning
        self._previous: dict[int, object] = {}

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread may set handlers (a run started from a worker thread keeps defaults)
        for signum in HANDLED:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        if exc is not None and self.signum is not None and not isinstance(exc, Interrupted) \
                and _is_stop(exc):  # Lightning's SIGTERMException (exit code 0) -> our exit status
            raise Interrupted(self.signum) from exc

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._relayed and signum == signal.SIGTERM:  # our own relay of a Ctrl-C, seen after Lightning's handler
            self._relayed = False
            return
        first = self.signum is None
        self.signum = self.signum or signum
        name = signal.Signals(signum).name
        if self._phase == "fit" and first:
            log.warning("%s received: stopping after this step (checkpoint on_exception.ckpt, run KILLED, continue "
                        "with resume=last); press Ctrl-C again to stop at once", name)
            if signum == signal.SIGINT:  # Lightning stops gracefully only on SIGTERM: hand it one
                if signal.getsignal(signal.SIGTERM) == self._handle:  # Lightning's handler not (yet) installed
                    raise Interrupted(signum)
                self._relayed = True
                signal.raise_signal(signal.SIGTERM)
            return
        if self._phase == "critical" and first:
            log.warning("%s received while writing the final record: stopping once it is complete", name)
            return
        if self._phase == "fit" and signum == signal.SIGTERM:
            return  # a repeated SIGTERM: Lightning is already stopping
        log.warning("%s received: stopping now", name)
        raise Interrupted(self.signum)

    @contextmanager
    def fitting(self):
        """Around `trainer.fit`: signals become Lightning's graceful stop at the next step boundary."""
        self._phase = "fit"
        try:
            yield
        finally:
            self._phase = "after"
        self.check()  # a signal at the last step: fit ended normally, but the user asked to stop

    @contextmanager
    def critical(self, stop_after: bool = True):
        """Around writing a file or record that must not be left half-done: a signal waits until it is complete.

        Args:
            stop_after: raise `Interrupted` right after the block when a signal arrived in it; False leaves the
                caller to `check()` later (the final record: the run is complete and ends FINISHED).
        """
        self.check()
        self._phase = "critical"
        try:
            yield
        finally:
            self._phase = "after"
        if stop_after:
            self.check()

    def check(self) -> None:
        """Raise `Interrupted` if a signal arrived; call between phases."""
        if self.signum is not None:
            raise Interrupted(self.signum)


def _is_stop(exc: BaseException) -> bool:
    """Lightning's SIGTERMException, or the KeyboardInterrupt/SystemExit(1) Lightning makes of a second Ctrl-C."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    return isinstance(exc, (SIGTERMException, KeyboardInterrupt, SystemExit))
