"""The enhancer: encoder v + projector h + latent space + denoiser g + objective.

``Enhancer.forward(batch) -> {"loss": scalar, ...diagnostics}``. A batch is either

* raw:    ``pixel_values[B,3,Se,Se]`` (encoder view) and ``gen_pixels[B,3,Sg,Sg]`` in [-1, 1]
  (generative view of the same crop), or
* cached: ``global_token[B,Dg]`` and ``latents[B,C,h,w]`` (continuous) / ``codes[B,h,w]``
  (discrete), written by ``genhancer cache`` for stage 1, so neither the encoder nor the
  autoencoder runs, or
* cached for stage 2: ``pixel_values`` (from the cache's uint8 views) and ``latents`` /
  ``codes``: the encoder runs (with LoRA), the autoencoder does not.

The model is built from the model sections of a config only (``ModelConfig``: encoder,
projector, cond, tokenizer, denoiser, objective, lora) and does not know how it is
trained: which parts train is set from outside with ``set_trainable(lora=, projector=,
denoiser=)``, by the stage table (``genhancer.training.stage``).
"""

from __future__ import annotations

import torch
from torch import nn

from genhancer.config import Config, ModelConfig
from genhancer.denoisers import build_denoiser, denoiser_hidden_size
from genhancer.encoders import VisionLanguageEncoder, load_encoder
from genhancer.lora import apply_vision_lora, has_lora, is_lora_param
from genhancer.projector import Projector


def _frozen_latent_space(cfg: ModelConfig) -> nn.Module:
    """The latent space named by ``cfg.tokenizer``, frozen (its buffers still load from checkpoints)."""
    from genhancer.latents import build_latent_space

    space = build_latent_space(cfg.tokenizer)
    for p in space.parameters():
        p.requires_grad_(False)
    return space.eval()


class Enhancer(nn.Module):
    def __init__(self, cfg: ModelConfig | Config, encoder: VisionLanguageEncoder | None = None,
                 space: nn.Module | None = None):
        super().__init__()
        # A whole Config is accepted for convenience and cut to its model sections at once:
        # nothing here may depend on how the model is trained.
        self.cfg = cfg = cfg if isinstance(cfg, ModelConfig) else cfg.model
        self.encoder = encoder if encoder is not None else load_encoder(cfg.encoder.name_or_path,
                                                                       cfg.encoder.image_size)
        self.space = space if space is not None else _frozen_latent_space(cfg)
        self.gen_size = cfg.tokenizer.image_size or self.encoder.spec.size
        # Discrete codes are tokens already; continuous latents are patchified p x p.
        self.patch = p = 1 if self.space.discrete else cfg.denoiser.patch_size
        h, w = self.space.latent_hw(self.gen_size, p)
        self.grid = (h // p, w // p)
        cond_dim = cfg.projector.cond_dim or denoiser_hidden_size(cfg.denoiser)
        self.local_fraction = cfg.cond.local_token_fraction
        self.shuffle_condition = cfg.cond.shuffle
        self.cond_source = cfg.cond.source
        n_patches = self.encoder.num_patches if self.cond_source == "patches" else 0
        self.projector = Projector(self.encoder.global_dim, cond_dim, cfg.projector.hidden_dim,
                                   patch_dim=self.encoder.patch_dim if self.local_fraction > 0 else None,
                                   oracle_dim=n_patches * self.encoder.patch_dim or None)
        from genhancer.objectives import build_objective

        self.denoiser = build_denoiser(cfg.denoiser, self.space, self.grid, cond_dim)
        scheduler = (cfg.denoiser.name_or_path, "scheduler") if cfg.denoiser.kind == "sd_unet" else None
        self.objective = build_objective(cfg.objective, scheduler_source=scheduler)
        self.preserve_weight = cfg.objective.preserve_weight
        if cfg.encoder.gradient_checkpointing:
            model = self.encoder.model  # renamed in transformers 5 (the old name warns)
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable()
        self.lora_trains = False
        self.set_trainable(lora=False, projector=True, denoiser=True)

    # ------------------------------------------------------------------ what trains
    def set_trainable(self, lora: bool = False, projector: bool = True, denoiser: bool = True) -> None:
        """Choose what trains. The encoder's own weights never do (but, with ``lora.bias=
        lora_only``, the biases of the wrapped linears); ``lora`` injects LoRA adapters on
        the vision side the first time it is asked for (later calls without it keep them,
        frozen)."""
        for prm in self.encoder.parameters():
            prm.requires_grad_(False)
        if lora:
            if not has_lora(self.encoder.model):
                if self.preserve_weight > 0:
                    self._keep_reference_encoder()
                apply_vision_lora(self.encoder, self.cfg.lora)
            for n, prm in self.encoder.model.named_parameters():
                prm.requires_grad_(is_lora_param(n, self.cfg.lora))
        self.lora_trains = lora
        for prm in self.projector.parameters():
            prm.requires_grad_(projector)
        for prm in self.denoiser.parameters():  # a frozen pretrained UNet (DCR) never trains
            prm.requires_grad_(denoiser and not self.cfg.denoiser.frozen)

    def _keep_reference_encoder(self) -> None:
        """A frozen copy of the vision side as it is now (before LoRA), for the drift
        regulariser when no cached original token is at hand. The text tower and other
        children are shared, not copied; the copy is kept outside the module tree so it is
        neither trained nor saved."""
        import copy

        model, tower = self.encoder.model, self.encoder.vision_tower
        # A vision-only model (DINOv2, ViT) is its own tower: then nothing is shared.
        memo = {} if tower is model else {id(c): c for n, c in model.named_children()
                                          if c is not tower and n != "visual_projection"}
        for attr in ("image_processor", "tokenizer"):
            if getattr(self.encoder, attr, None) is not None:
                memo[id(getattr(self.encoder, attr))] = getattr(self.encoder, attr)
        ref = copy.deepcopy(self.encoder, memo).eval()
        for prm in ref.parameters():
            prm.requires_grad_(False)
        self.__dict__["_reference_encoder"] = ref

    def preserve_loss(self, global_token: torch.Tensor, pixel_values: torch.Tensor,
                      original: torch.Tensor | None = None) -> torch.Tensor:
        """``1 - cos(global, original global)`` averaged over the batch; ``original[B,Dg]`` is the
        frozen encoder's token of the same view (a cache holds it), else computed here."""
        if original is None:
            ref = self.__dict__.get("_reference_encoder")
            if ref is None:
                from genhancer.errors import ConfigError

                raise ConfigError("objective.preserve_weight: no original encoder kept; it is kept when LoRA "
                                  "is first applied (stage 2 / e2e)")
            with torch.no_grad():
                original = ref.to(pixel_values.device).encode_image(pixel_values)[0]
        cos = torch.nn.functional.cosine_similarity(global_token.float(), original.float().to(global_token.device),
                                                    dim=-1)
        return (1 - cos).mean()

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}

    # ------------------------------------------------------------------ conditioning
    @property
    def needs_patches(self) -> bool:
        """The condition reads patch tokens (local tokens or the oracle): a token cache cannot serve."""
        return self.local_fraction > 0 or self.cond_source == "patches"

    def condition(self, global_token: torch.Tensor, patches: torch.Tensor | None = None,
                  generator: torch.Generator | None = None):
        """global[B,Dg] (+ patches[B,N,Dv]) -> cond[B,Dc], cond_tokens[B,K,Dc] | None.

        With ``cond.source="patches"`` (the oracle) the global token is replaced by a learnt
        map of every patch token."""
        if self.cond_source == "patches":
            if patches is None:
                from genhancer.errors import ConfigError

                raise ConfigError("cond.source=patches needs patch tokens: train from images or a "
                                  "`genhancer cache --with-pixels` cache")
            global_token = self.projector.oracle_token(patches)
        cond = self.projector(global_token)
        if self.local_fraction <= 0 or patches is None:
            return cond, None
        b, n, _ = patches.shape
        k = max(1, round(self.local_fraction * n))
        # A fresh random subset per sample: the ablation feeds *some* local detail.
        dev = generator.device if generator is not None else patches.device
        scores = torch.rand(b, n, generator=generator, device=dev).to(patches.device)
        idx = scores.argsort(dim=1)[:, :k]
        picked = torch.gather(patches, 1, idx[..., None].expand(-1, -1, patches.shape[-1]))
        return cond, self.projector.project_local(picked)

    def encode(self, pixel_values: torch.Tensor):
        """Encoder forward; no graph unless LoRA weights are training."""
        needs_grad = self.lora_trains and torch.is_grad_enabled()
        with torch.set_grad_enabled(needs_grad):
            return self.encoder.encode_image(pixel_values)

    @torch.no_grad()
    def target(self, gen_pixels: torch.Tensor) -> torch.Tensor:
        """Generative view [B,3,Sg,Sg] in [-1,1] -> latents[B,C,h,w] or codes[B,h,w]."""
        return self.space.encode(gen_pixels)

    # ------------------------------------------------------------------ loss
    def forward(self, batch: dict, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        pixels = batch.get("pixel_values")
        if pixels is not None:
            global_token, patches = self.encode(pixels)
        else:
            global_token, patches = batch["global_token"], None
        cached = "codes" if self.space.discrete else "latents"
        z = batch[cached] if cached in batch else self.target(batch["gen_pixels"])
        drift = None
        if self.preserve_weight > 0 and self.lora_trains and pixels is not None:
            # Before any shuffling: each token is held to its own image's original token.
            drift = self.preserve_loss(global_token, pixels, batch.get("global_token"))
        aug = self._augmented(pixels, generator)
        if self.shuffle_condition:
            # The control: each image is reconstructed from another image's global token, so
            # the feedback says nothing about the image itself (gradients still reach LoRA).
            from genhancer.diagnostics import shuffled_global

            global_token = shuffled_global(global_token)
            patches = None if patches is None else shuffled_global(patches)
            aug = None if aug is None else tuple(None if a is None else shuffled_global(a) for a in aug)
        out = self.loss_from(global_token, patches, z, generator, aug=aug)
        if drift is not None:
            out["loss"] = out["loss"] + self.preserve_weight * drift
            out["preserve"] = drift.detach()
        return out

    def _augmented(self, pixels: torch.Tensor | None, generator: torch.Generator | None):
        """(global, patches) of DCR's augmented view when the objective uses one and pixels exist."""
        term = getattr(self.objective, "contrastive", None)
        if pixels is None or term is None or not term.augment:
            return None
        from genhancer.data.augment import augmented_view

        return self.encode(augmented_view(pixels, self.encoder.spec.mean, self.encoder.spec.std, generator))

    def loss_from(self, global_token: torch.Tensor, patches: torch.Tensor | None, z: torch.Tensor,
                  generator: torch.Generator | None = None, aug: tuple | None = None) -> dict[str, torch.Tensor]:
        """The objective's loss on targets ``z`` (latents / codes) given encoder outputs (and
        ``aug`` = (global, patches) of an augmented view, for a contrastive objective)."""
        cond, cond_tokens = self.condition(global_token, patches, generator)
        if self.space.discrete:
            return self.objective.loss(self.denoiser, z.flatten(1), cond, cond_tokens, generator=generator)
        from genhancer.latents.patchify import patchify

        cond_aug = None if aug is None else self.condition(aug[0], aug[1], generator)[0]
        x1 = patchify(z, self.patch)
        return self.objective.loss(self.denoiser, x1, cond, cond_tokens, grid=self.grid, generator=generator,
                                   cond_aug=cond_aug)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def reconstruct(self, pixel_values: torch.Tensor, generator: torch.Generator | None = None,
                    steps: int | None = None) -> torch.Tensor:
        """Images [B,3,Sg,Sg] in [-1,1] generated from the global token of ``pixel_values`` alone."""
        global_token, patches = self.encoder.encode_image(pixel_values)
        cond, cond_tokens = self.condition(global_token, patches, generator)
        h, w = self.grid[0] * self.patch, self.grid[1] * self.patch
        if self.space.discrete:
            codes = self.objective.sample(self.denoiser, cond, h * w, cond_tokens=cond_tokens, steps=steps,
                                          generator=generator)
            return self.space.decode(codes.view(-1, h, w))
        from genhancer.latents.patchify import unpatchify

        p = self.patch
        shape = (cond.shape[0], self.grid[0] * self.grid[1], self.space.channels * p * p)
        x1 = self.objective.sample(self.denoiser, cond, shape, cond_tokens=cond_tokens, grid=self.grid,
                                   steps=steps, generator=generator)
        return self.space.decode(unpatchify(x1, p, h, w, self.space.channels)).clamp(-1, 1)
