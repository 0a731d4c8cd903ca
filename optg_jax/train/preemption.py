"""Stopping on SIGTERM: the notice a Cloud TPU (or any scheduler) gives before it takes a VM.

The training loop asks `Watch.requested(step)` after every step. With several processes under
`jax.distributed`, JAX's preemption service (started by `jax.distributed.initialize`) catches
SIGTERM on any host and has every process agree on one step, which orbax's
`CheckpointManager.reached_preemption` reports at that step on all of them. A single process
never reaches that sync point, so `Watch` installs its own SIGTERM handler there; it only sets a
flag, so the step in flight, a save in flight and the evaluation at an epoch's end all finish
first, and a second SIGTERM changes nothing. The loop then saves the state at that step, waits
for the save, and raises `Preempted`; `train.py` prints its one line and exits with
`EXIT_PREEMPTED`.
"""

from __future__ import annotations

import signal
import threading

import jax
import orbax.checkpoint as ocp
from absl import logging

# sysexits.h's EX_TEMPFAIL ("a temporary failure; the user is invited to retry"): the run saved
# its state and rerunning the same command resumes it.
EXIT_PREEMPTED = 75


class Preempted(RuntimeError):
    """The run stopped on SIGTERM after saving its state; the message is one line.

    Attributes:
      step: the step of the checkpoint it saved.
    """

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


def sync_service_running() -> bool:
    """Whether JAX's preemption service watches for SIGTERM in this process.

    Returns:
      True once `jax.distributed.initialize` has run with the service enabled (the default,
      `jax_enable_preemption_service`).
    """
    return jax.distributed.is_initialized() and bool(jax.config.jax_enable_preemption_service)


class Watch:
    """Tells the training loop, at a step boundary, that the run must stop and save.

    Use it as a context manager around the loop: a single process's SIGTERM handler is
    installed on entry (from the main thread only; elsewhere the signal keeps its old
    disposition) and the previous handler restored on exit.

    Attributes:
      signals: how many SIGTERMs this process's handler received (0 under the sync service,
        which handles them itself).
    """

    def __init__(self, mngr: ocp.CheckpointManager):
        """A watch for the run whose checkpoints `mngr` keeps.

        Args:
          mngr: the workdir's checkpoint manager (its `reached_preemption` is the sync point).
        """
        self._mngr = mngr
        self._synced = sync_service_running()
        self._event = threading.Event()
        self._previous = None
        self.signals = 0

    def _handle(self, signum, frame) -> None:  # pylint: disable=unused-argument
        self.signals += 1
        self._event.set()

    def __enter__(self) -> Watch:
        if not self._synced and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        elif not self._synced:
            logging.warning("not the main thread: SIGTERM will not save a checkpoint")
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def requested(self, step: int) -> bool:
        """Whether the run must save at `step` and stop; every process calls it at every step.

        Args:
          step: the number of steps done.

        Returns:
          Under the sync service, True on every process at the same step once any of them got
          SIGTERM; otherwise True once this process got SIGTERM.
        """
        if self._synced:
            return bool(self._mngr.reached_preemption(step))
        return self._event.is_set()
