"""What a training stage means, in one table.

A stage name (``train.stage``: ``"1"``, ``"2"``, ``"e2e"``) is looked up here and nowhere
else: which parts of the :class:`~genhancer.enhancer.Enhancer` train, the default learning
rate, whether the run starts from a stage-1 checkpoint (``train.init_from``) and which
kind of cache it can read.

* stage 1: encoder frozen; projector + denoiser train (from images or a token cache).
* stage 2: LoRA on the vision tower trains; projector / denoiser by config
  (``train.train_projector`` / ``train.train_denoiser``); starts from a stage-1 run.
* e2e:     LoRA and a fresh projector + denoiser together (an ablation).

Every stage may read a cache: ``cache_kind`` ``"tokens"`` means the frozen encoder's
cached global tokens serve (any cache holds them); ``"pixels"`` means the encoder runs
(with LoRA) on cached encoder views, which only a ``genhancer cache --with-pixels`` cache holds.
"""

from __future__ import annotations

from dataclasses import dataclass

from genhancer.errors import ConfigError


@dataclass(frozen=True)
class Stage:
    name: str
    lora: bool                       # LoRA adapters on the vision tower train
    projector: bool | None           # None: by config (train.train_projector)
    denoiser: bool | None            # None: by config (train.train_denoiser)
    default_lr: float                # when train.lr is not set
    needs_init_from: bool            # starts from a stage-1 checkpoint (and keeps its latent space)
    cache_kind: str                  # "tokens" | "pixels" (see the module docstring)
    label: str                       # for messages

    def trainable(self, train_cfg=None) -> dict[str, bool]:
        """``lora`` / ``projector`` / ``denoiser`` flags for :meth:`Enhancer.set_trainable`
        (``train_cfg``: a ``TrainConfig``; None: the by-config parts train)."""
        def by_config(fixed: bool | None, field: str) -> bool:
            return fixed if fixed is not None else (train_cfg is None or getattr(train_cfg, field))

        return {"lora": self.lora, "projector": by_config(self.projector, "train_projector"),
                "denoiser": by_config(self.denoiser, "train_denoiser")}

    def apply(self, enhancer, train_cfg=None) -> None:
        """Make ``enhancer`` train what this stage trains."""
        enhancer.set_trainable(**self.trainable(train_cfg))

    @property
    def fresh_latent_space(self) -> bool:
        """The latent space's statistics are this run's own (measured on its data or taken
        from its cache), not those of an ``init_from`` run."""
        return not self.needs_init_from


STAGES: dict[str, Stage] = {
    "1": Stage("1", lora=False, projector=True, denoiser=True, default_lr=1e-4, needs_init_from=False,
               cache_kind="tokens", label="stage 1"),
    "2": Stage("2", lora=True, projector=None, denoiser=None, default_lr=1e-5, needs_init_from=True,
               cache_kind="pixels", label="stage 2"),
    "e2e": Stage("e2e", lora=True, projector=True, denoiser=True, default_lr=1e-5, needs_init_from=False,
                 cache_kind="pixels", label="end-to-end"),
}


def stage_of(name: str) -> Stage:
    """The :class:`Stage` called ``name`` (a config's ``train.stage``)."""
    try:
        return STAGES[name]
    except KeyError:
        raise ConfigError(f"train.stage: expected one of {', '.join(STAGES)}; got {name!r}") from None
