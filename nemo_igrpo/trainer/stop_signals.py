"""Stopping a run on a signal, and saying what was kept: Slurm's time-limit warning, preemption, Ctrl-C.

=========  ==========================================  =============================================================
signal     sent by                                      what the trainer does
=========  ==========================================  =============================================================
SIGUSR1    Slurm, ``--signal=B:USR1@600`` (forwarded    finishes the current step, saves a checkpoint, exits 0; the
           by slurm/common.sh): the time limit is near  batch script requeues. Nothing is lost if the lead time covers
                                                        one step plus one save.
SIGTERM    Slurm preemption, ``scancel``, the time      saves at once if the policy can: between steps at once; during
           limit itself                                 a step as soon as the step ends, without validating. A step
                                                        that cannot end (and be saved) within
                                                        ``trainer.preemption_grace_s`` is lost: the process says so and
                                                        exits 0, and the run resumes from the last checkpoint.
SIGINT     Ctrl-C                                       like SIGTERM. In a single process, a Ctrl-C during the rollouts
                                                        abandons the step at once (the policy has not changed yet) and
                                                        saves the last finished step. A second Ctrl-C stops at once
                                                        without saving (KeyboardInterrupt).
=========  ==========================================  =============================================================

Why a step is not simply abandoned on SIGTERM in a multi-rank job: the ranks are in lockstep inside collectives
(vLLM's tensor-parallel forward passes, the trainer's broadcasts and all-reduces); a rank that jumped out of its step
while its peers wait in a collective would hang them all until the grace period ran out, and a checkpoint needs every
rank. Only where no peer can wait (one process) is a step abandoned, and only while the policy is untouched (the
rollout phase), so the saved state is exactly the last finished step; never inside one of the lifecycle's memory
transitions (optimizer offload, sleep, wake, refit), which then run to their end, and the step with them.

Which steps can be lost: with SIGUSR1, none. With SIGTERM/SIGINT, at most the steps since the last checkpoint
(``trainer.save_every`` - 1 finished ones) plus the one in flight, when the in-flight step cannot finish within the
grace period. So choose ``save_every`` such that ``save_every`` x (step time) is the work you accept to redo after a
preemption, and keep the time-limit warning (``--signal=B:USR1@LEAD``) longer than one step plus one save.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import CodeType, FrameType
from typing import Callable

log = logging.getLogger("nemo_igrpo.trainer")


class StepAbandoned(BaseException):
    """Raised out of a step that a signal abandoned before it changed the policy. A BaseException so that no
    ``except Exception`` on the way up swallows it."""


class StopSignals:
    """Installs the SIGUSR1/SIGTERM/SIGINT handlers for the duration of a ``with`` block and records what was asked.

    The loop tells it where it is (``step_started``/``step_finished``, ``saved``) so that every message says which
    step is in flight and which one the run would resume from. ``abandonable`` lists the code objects inside which a
    step may be abandoned at once (empty in multi-rank jobs), ``protected`` those that a signal must never cut short
    even there (the lifecycle's memory transitions: half done, they would leave the optimizer state in host memory
    and the engine neither awake nor asleep, and the checkpoint would be written from that state); ``exit_process``
    ends the process when the grace period runs out (``os._exit``: the main thread may be blocked in a collective that
    no exception can interrupt).
    """

    def __init__(self, grace_s: float, abandonable: tuple[CodeType, ...] = (), protected: tuple[CodeType, ...] = (),
                 exit_process: Callable[[int], None] = os._exit) -> None:
        self.grace_s = float(grace_s)
        self.abandonable = abandonable
        self.protected = protected
        self.exit_process = exit_process
        self.requested = False  # any stop signal: save at the end of the step (or now, between steps) and exit
        self.urgent = False  # SIGTERM/SIGINT: skip what can wait (validation)
        self.reason = ""
        self.step = 0  # the step in flight, or the last one finished
        self.in_step = False
        self.last_saved = 0  # the newest checkpoint's step (0: none; a run resumes from it)
        self._interrupts = 0
        self._watchdog: threading.Timer | None = None
        self._previous: dict[int, object] = {}

    # --- installation ------------------------------------------------------------------------------------------------
    def __enter__(self) -> "StopSignals":
        for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    # --- where the loop is -------------------------------------------------------------------------------------------
    def step_started(self, step: int) -> None:
        self.step, self.in_step = step, True

    def step_finished(self) -> None:
        self.in_step = False

    def step_rolled_back(self, step: int) -> None:
        """An abandoned step: ``step`` is again the last one finished."""
        self.step, self.in_step = step, False

    def saved(self, step: int) -> None:
        self.last_saved = step

    def _resume_point(self) -> str:
        if self.last_saved:
            return f"the run resumes from the checkpoint of step {self.last_saved}"
        return "there is no checkpoint yet: the run starts again from the beginning"

    def _at_risk(self) -> str:
        """The steps lost if the process ends now."""
        if self.step <= self.last_saved:
            return "no step is lost"
        first, last = self.last_saved + 1, self.step
        return f"step{'s' if last > first else ''} {first}{'-' + str(last) if last > first else ''} would be lost"

    # --- the handler -------------------------------------------------------------------------------------------------
    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGINT:
            self._interrupts += 1
            if self._interrupts > 1:
                raise KeyboardInterrupt("second Ctrl-C: stopping without saving")
        first = not self.requested
        self.requested = True
        self.reason = self.reason or name
        if signum == signal.SIGUSR1:
            if first:
                log.warning("%s (time limit near): %s, then saving a checkpoint and exiting", name,
                            f"finishing step {self.step}" if self.in_step else "no step in flight")
            return
        if self.urgent:  # Slurm signals the batch shell and the tasks; the shell forwards it again: once is enough
            return
        self.urgent = True
        if self.in_step and self.abandonable and _abandonable_here(frame, self.abandonable, self.protected):
            log.warning("%s during the rollouts of step %d: abandoning the step (the policy is unchanged) and saving "
                        "at once", name, self.step)
            raise StepAbandoned(name)
        if self.in_step:
            log.warning("%s during step %d: it is saved when the step ends if that happens within "
                        "trainer.preemption_grace_s=%gs; otherwise %s and %s%s", name, self.step, self.grace_s,
                        self._at_risk(), self._resume_point(),
                        "" if signum == signal.SIGTERM else " (Ctrl-C again: stop now without saving)")
        else:
            log.warning("%s between steps: saving at once and exiting", name)
        self._arm_watchdog(name)

    def _arm_watchdog(self, name: str) -> None:
        if self.grace_s <= 0:
            return
        self._watchdog = threading.Timer(self.grace_s, self._expire, args=(name,))
        self._watchdog.daemon = True
        self._watchdog.start()

    def _expire(self, name: str) -> None:
        what = f"step {self.step} did not finish" if self.in_step else f"the checkpoint of step {self.step} was not " \
            "finished"
        log.error("%s: %s within trainer.preemption_grace_s=%gs: %s, and %s. Exiting with status 0 so that the job "
                  "can be requeued.", name, what, self.grace_s, self._at_risk().replace("would be", "are"),
                  self._resume_point())
        for handler in logging.getLogger().handlers + log.handlers:
            handler.flush()
        self.exit_process(0)


def _abandonable_here(frame: FrameType | None, abandonable: tuple[CodeType, ...],
                      protected: tuple[CodeType, ...]) -> bool:
    """The interrupted code runs inside an ``abandonable`` function, and not inside a ``protected`` one called
    from it."""
    while frame is not None:
        if frame.f_code in protected:
            return False
        if frame.f_code in abandonable:
            return True
        frame = frame.f_back
    return False
