"""Training: the loop and its parts.

* ``loop``      — ``train(cfg)``: orchestration of one run (stage 1, stage 2 or e2e);
* ``stage``     — the Stage table: what a stage trains, its default lr, init_from, cache kind;
* ``step``      — the optimizer and one optimizer step;
* ``guard``     — skipping non-finite steps, refusing non-finite checkpoints;
* ``preempt``   — stopping at a checkpoint on SIGTERM / SIGINT / SIGUSR1;
* ``state``     — a run's checkpoints (weights, optimizer, RNG, data position);
* ``log``       — ``log.csv``, ``diagnostics.json``, the condition-usage diagnostic;
* ``precision`` — the mixed precision a run uses.

``from genhancer.training import train`` is the entry point. It is looked up lazily, so
that importing ``genhancer.training.stage`` (which ``genhancer.config`` does) stays light
and does not import the loop.
"""

from __future__ import annotations

__all__ = ["train", "TrainResult", "build_for_training"]


def __getattr__(name: str):
    if name in __all__:
        from genhancer.training import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'genhancer.training' has no attribute '{name}'")
