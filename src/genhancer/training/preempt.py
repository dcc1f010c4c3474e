"""Stopping on a signal: finish the optimizer step, checkpoint it, exit 128 + the signal number.

SIGTERM (a scheduler's preemption, ``kill``), SIGINT (Ctrl-C) and SIGUSR1 (Slurm's
``--signal=USR1@<seconds>``) only set a flag while training runs; the loop reads it after
each optimizer step (:meth:`StopSignals.poll`), writes a checkpoint at that step through the
usual atomic path and raises :class:`~genhancer.errors.Preempted` (exit 143 / 130 / 138).
A second signal ends the process at once (``os._exit``): a checkpoint being written then
stays a ``.tmp-*`` directory, which is never taken for a checkpoint and is removed when the
run is resumed, so the previous checkpoint remains the latest. A signal within
``SAME_REQUEST_S`` of the first is the same request passed on, not a second one: torchrun's
agent (under ``accelerate launch``) sends every rank the SIGTERM / SIGINT it received itself,
and Slurm or a terminal has already sent it to the ranks directly.

Several ranks stop at the same step: each step every rank adds its flag to an all-reduce
(what the non-finite guard does with its counters) whose result the host reads one step
later, so the hot loop never waits for the device; the ranks therefore stop one step
after the first signal, all at the same step. One process reads its own flag directly and
stops at the step during which the signal came.

DataLoader workers get these signals too (Ctrl-C reaches the process group, Slurm every
process of a step): they block them (``genhancer.data.loader``), and a worker that runs
this handler (inherited through fork) ignores it; the main process stops them.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import torch

from genhancer.errors import Preempted

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
SAME_REQUEST_S = 1.0  # torchrun passes a signal on within milliseconds; a person presses twice slower


def exit_code(signum: int) -> int:
    """What a shell reports for a process a signal ended: 143 / 130 / 138."""
    return 128 + signum


class StopSignals:
    """The stop flag of one training run; a context manager that installs the handlers for
    its ``with`` block and puts the previous ones back after it."""

    def __init__(self, accelerator):
        self.acc = accelerator
        self.world = accelerator.num_processes
        self.received: int | None = None     # the first signal, in this process
        self.received_at = 0.0
        self.pid = os.getpid()
        self.pending: torch.Tensor | None = None  # the last step's all-reduced flags (several ranks)
        self.agreed: int | None = None       # the signal every rank stops on
        self.previous: dict = {}

    def __enter__(self) -> StopSignals:
        # Python only lets the main thread install handlers; train() called from another
        # thread keeps the process's signal behaviour.
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self.previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self.previous.items():
            signal.signal(s, signal.SIG_DFL if h is None else h)  # None: set outside Python
        self.previous = {}

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self.pid:  # a forked DataLoader worker
            return
        now = time.monotonic()
        if self.received is not None:
            if now - self.received_at < SAME_REQUEST_S:
                return
            os.write(2, f"{signal.Signals(signum).name} again: exiting now; the checkpoint being written, if "
                        "any, is discarded and the previous one stays the latest\n".encode())
            os._exit(exit_code(signum))
        self.received, self.received_at = signum, now

    def poll(self) -> bool:
        """Whether every rank stops after this step (every rank calls it after every step);
        sets :attr:`agreed`, the signal they stop on."""
        if self.world == 1:
            self.agreed = self.received
            return self.agreed is not None
        # One slot per signal, so that every rank also agrees on which one (and its exit
        # code). Fills on the device: no host-to-device copy for the step to wait on.
        flags = torch.zeros(len(SIGNALS), device=self.acc.device)
        if self.received is not None:
            flags[SIGNALS.index(self.received)] = 1.0
        earlier, self.pending = self.pending, self.acc.reduce(flags, reduction="sum")
        if earlier is None:
            return False
        hit = [s for s, n in zip(SIGNALS, earlier.tolist()) if n > 0]
        self.agreed = hit[0] if hit else None
        return self.agreed is not None

    def preempted(self, step: int, ckpt) -> Preempted:
        """The exception that ends the run; only the main process says where it stopped.

        Also for a signal that came after the ranks last agreed (during the last step or
        the final checkpoint): the run is complete then, and the process still stops."""
        signum = self.agreed or self.received
        name = signal.Signals(signum).name
        self.acc.print(f"{name}: stopped after step {step}, checkpoint '{ckpt}'")
        where = f"stopped by {name} at step {step}; checkpoint '{ckpt}'" if self.acc.is_main_process else ""
        return Preempted(where, exit_code(signum), "continue with `genhancer train ... --resume`")
