"""Stop requests: Ctrl-C (SIGINT) and SIGTERM end a sweep the same way.

    python -m study.sweep smoke --data-dir ../shared/data/ptb     # Ctrl-C, or `kill <pid>`, or `ray job stop`

SIGTERM is what `ray job stop`, a cluster's scheduler and `kill` send; without a handler of ours,
Ray's own (installed by `ray.init`) exits from inside Tune's loop and the driver dies with a
native stack dump. While Tune runs the sweep, the first request asks Tune to stop with its own
stop signal (SIGUSR1: Tune saves the experiment's state, ends the running trials, and returns)
and says at once on the console that it is stopping and what it waits for; a second request skips
that save (KeyboardInterrupt, as Tune's own second Ctrl-C). Outside Tune's run (loading data,
starting Ray, writing the report) a request interrupts at once. The exit status names the signal
as a shell does: 130 for SIGINT, 143 for SIGTERM.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

from ray import tune

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
TUNE_SIGINT_ENV = "TUNE_DISABLE_SIGINT_HANDLER"  # Tune then leaves SIGINT to us
TUNE_STOP = signal.SIGUSR1  # Tune 2.60 stops a run on it as on its first SIGINT (ray.tune.tune._setup_signal_catching)


class Stopped(KeyboardInterrupt):
    """A stop request outside Tune's run, or a second one inside it: `signum` is the first request's."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopRequests(tune.Callback):
    """Catches SIGINT and SIGTERM for the whole command. `on_stop(signal name)` runs once, at the first
    request while Tune runs the sweep (the view says it is stopping). A tune.Callback, so that it
    knows when Tune's run begins (setup) and ends (on_experiment_end)."""

    def __init__(self, on_stop: Callable[[str], None] = lambda name: None):
        self.on_stop = on_stop
        self.signum: int | None = None  # the first request's signal; None while there is none
        self.tune_running = False
        self._before: dict = {}  # what `install` replaced: signal -> handler
        self._tune_env: str | None = None

    def __reduce__(self):
        # Ray keeps the RunConfig, callbacks included, in tuner.pkl; signal handling belongs to one process.
        return (tune.Callback, ())

    def install(self) -> None:
        """Take SIGINT and SIGTERM (again after `ray.init`, which sets its own SIGTERM handler), and
        keep Tune from taking SIGINT (it would restore the handler before it after the first)."""
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers; a caller in a thread keeps Python's
        if not self._before:
            self._before = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
            self._tune_env = os.environ.get(TUNE_SIGINT_ENV)
        os.environ[TUNE_SIGINT_ENV] = "1"
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._request)

    def uninstall(self) -> None:
        """Give SIGINT and SIGTERM back to the handlers they had before `install` (a caller in-process)."""
        for signum, handler in self._before.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        if self._before:
            os.environ.pop(TUNE_SIGINT_ENV, None)
            if self._tune_env is not None:
                os.environ[TUNE_SIGINT_ENV] = self._tune_env
        self._before = {}

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum or signal.SIGINT).name

    @property
    def exit_status(self) -> int:
        """128 + the signal, as a shell reports a command it ended: 130 (SIGINT), 143 (SIGTERM)."""
        return 128 + (self.signum or signal.SIGINT)

    # Tune's events: when a request goes to Tune instead of interrupting

    def setup(self, **info) -> None:
        self.tune_running = True

    def on_experiment_end(self, trials: list, **info) -> None:
        self.tune_running = False

    def _request(self, signum: int, frame) -> None:
        first = self.signum is None
        self.signum = self.signum or signum
        # Tune sets its SIGUSR1 handler before it calls setup(); without it SIGUSR1 would end the process.
        if first and self.tune_running and signal.getsignal(TUNE_STOP) not in (signal.SIG_DFL, None):
            self.on_stop(signal.Signals(signum).name)
            os.kill(os.getpid(), TUNE_STOP)
            return
        raise Stopped(self.signum)
