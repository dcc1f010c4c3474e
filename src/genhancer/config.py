"""Typed configuration: dataclasses, named presets, YAML files and dotted overrides.

A run is described by one :class:`Config`. It is built in three layers, each overriding
the previous one:

1. the dataclass defaults below,
2. a preset (``configs/<name>.yaml`` shipped in the package) or a user YAML file;
   a YAML file may name a ``base:`` preset / file it extends,
3. ``section.field=value`` overrides from the command line, read as the field's type
   (:func:`parse_override`): a string field takes the text after ``=`` as it is (``no``,
   ``off``, ``null``, ``1e-3`` stay text; surrounding quotes are removed), an optional
   string field reads ``null`` / ``~`` as None, a list of strings keeps its items as text,
   and every other field is parsed as YAML (``true`` / ``false``, numbers, lists).

Every field is checked against its annotated type and, where given, its range or
choices; a float field (or list element) must be a finite number. Problems raise :class:`~genhancer.errors.ConfigError` with one line naming the
field and what was expected, which the CLI turns into exit code 2.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from genhancer.config_types import check_range, coerce
from genhancer.errors import ConfigError
from genhancer.training.stage import STAGES, stage_of


def _f(default: Any = dataclasses.MISSING, *, choices: tuple | None = None, lo: float | None = None,
       hi: float | None = None, doc: str = "", factory: Any = dataclasses.MISSING):
    """A dataclass field carrying validation metadata (choices, inclusive bounds)."""
    meta = {"choices": choices, "lo": lo, "hi": hi, "doc": doc}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class EncoderConfig:
    # hub id or local directory of a transformers CLIPModel / SiglipModel checkpoint
    name_or_path: str = _f("", doc="hub id or local directory of a CLIP / SigLIP checkpoint, or an image-only DINOv2 / ViT one")
    image_size: int | None = _f(None, lo=16, doc="override the processor's image size")
    gradient_checkpointing: bool = _f(False)


@dataclass
class ProjectorConfig:
    # LayerNorm -> Linear(Dg, hidden) -> GELU -> Linear(hidden, cond_dim); upstream hidden 768
    hidden_dim: int = _f(768, lo=1)
    cond_dim: int | None = _f(None, lo=1, doc="defaults to the denoiser's hidden size")


@dataclass
class CondConfig:
    # Fraction of the encoder's patch tokens also fed as condition tokens (paper ablation).
    local_token_fraction: float = _f(0.0, lo=0.0, hi=1.0)
    shuffle: bool = _f(False, doc="control: condition each image on another image's global token "
                                  "(the feedback then carries nothing about the image)")
    source: str = _f("global", choices=("global", "patches"),
                     doc="what the condition is made of: the global token (the method), or every patch "
                         "token through a learnt linear map (an oracle that holds what the vision tower "
                         "sees: the drawability ceiling)")


@dataclass
class TokenizerConfig:
    """The latent space the denoiser works in."""

    kind: str = _f("taef2", choices=("taef2", "vae", "pixels", "vq"))
    name_or_path: str = _f("", doc="diffusers AutoencoderKL / VQModel dir or id, or a genhancer VQ checkpoint")
    subfolder: str = _f("", doc="subfolder of name_or_path holding the autoencoder (e.g. 'vae')")
    image_size: int | None = _f(None, lo=8, doc="generative view size; defaults to the encoder's")
    shift: float | None = _f(None, doc="latent shift; None = the space's default")
    scale: float | None = _f(None, doc="latent scale; None = the space's default")
    sample_posterior: bool = _f(True)


@dataclass
class DenoiserConfig:
    kind: str = _f("flow_dit", choices=("flow_dit", "perceiver", "sd_unet"),
                   doc="flow_dit: our MM-DiT (random init, or init_from a FLUX checkpoint); perceiver: discrete; "
                       "sd_unet: a pretrained diffusers UNet2DConditionModel (DIVA / DCR)")
    preset: str = _f("tiny", doc="size preset of the chosen denoiser kind (flow_dit / perceiver)")
    # Every size below overrides the preset when not None.
    hidden_size: int | None = _f(None, lo=8)
    num_heads: int | None = _f(None, lo=1)
    mlp_ratio: float | None = _f(None, lo=0.5)
    depth_double: int | None = _f(None, lo=0)
    depth_single: int | None = _f(None, lo=0)
    depth: int | None = _f(None, lo=1, doc="perceiver layers")
    patch_size: int = _f(2, lo=1)
    qk_norm: bool = _f(True)
    gradient_checkpointing: bool = _f(False)
    init_from: str = _f("", doc="flow_dit: a diffusers FluxTransformer2DModel dir or hub id whose blocks, RoPE and "
                                "modulation are loaded (the condition embedders stay new); empty = random init")
    # sd_unet (a diffusers pipeline folder / id: unet/, scheduler/, text_encoder/, tokenizer/)
    name_or_path: str = _f("", doc="sd_unet: Stable Diffusion pipeline dir or hub id (e.g. "
                                   "stabilityai/stable-diffusion-2-1)")
    subfolder: str = _f("unet", doc="sd_unet: the UNet's subfolder of name_or_path")
    frozen: bool = _f(False, doc="sd_unet: keep the UNet's weights frozen in every stage (DCR); false: it trains "
                                 "where the stage trains the denoiser")
    cond_mode: str = _f("add_empty_prompt", choices=("add_empty_prompt", "alone"),
                        doc="sd_unet: the projected global token repeated over text_length tokens and added to "
                            "the empty prompt's text embedding (DCR), or used alone")
    text_length: int = _f(77, lo=1, doc="sd_unet: condition tokens (the text encoder's length)")


@dataclass
class ObjectiveConfig:
    kind: str = _f("rectified_flow", choices=("rectified_flow", "masked_tokens", "contrastive_rf", "ddpm",
                                             "contrastive_ddpm"),
                   doc="rectified_flow: MSE on the velocity (GenHancer); contrastive_rf: DCR's InfoNCE over the "
                       "denoiser's predictions on the rectified-flow path; ddpm: diffusers' DDPM loss (sd_unet); "
                       "contrastive_ddpm: that InfoNCE alone on the DDPM path (DCR); masked_tokens: discrete")
    # rectified flow
    timestep_sampler: str = _f("logit_normal", choices=("logit_normal", "uniform"))
    logit_normal_scale: float = _f(1.0, lo=1e-6, doc="s in t = sigmoid(s * N(m, 1))")
    logit_normal_mean: float = _f(0.0)
    sample_steps: int = _f(25, lo=1)
    # masked tokens
    mask_schedule: str = _f("uniform_range", choices=("uniform_range", "cosine", "fixed"))
    mask_ratio_min: float = _f(0.5, lo=0.0, hi=1.0)
    mask_ratio_max: float = _f(0.9, lo=0.0, hi=1.0)
    # contrastive (DCR); contrastive_rf / contrastive_ddpm are the contrastive term alone
    contrastive_weight: float = _f(0.0, lo=0.0, doc="rectified_flow / ddpm: loss = mse + weight * contrastive "
                                                    "(0 = off)")
    temperature: float = _f(0.1, lo=1e-6, doc="contrastive: InfoNCE temperature tau")
    num_negatives: int = _f(0, lo=0, doc="contrastive: other images' conditions per anchor (0 = all B-1; each "
                                         "costs one denoiser forward per image)")
    augment: bool = _f(True, doc="contrastive: the prediction under an augmented view's condition is a positive "
                                 "(needs the encoder's pixels: images or a --with-pixels cache)")
    # drift regulariser
    preserve_weight: float = _f(0.0, lo=0.0, doc="adds weight * (1 - cos(global token, the original encoder's)) "
                                                 "where the encoder trains")


@dataclass
class LoraConfig:
    r: int = _f(16, lo=1)
    alpha: float = _f(16.0, lo=0.0)
    dropout: float = _f(0.1, lo=0.0, hi=1.0)
    # Suffixes of nn.Linear module names inside the vision tower; defaults cover
    # CLIP and SigLIP attention + MLP linears.
    target_modules: list[str] = _f(factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"])
    # Upstream's stage 2 (peft all-linear over the CLIPModel, bias='lora_only'): the visual
    # projection, which makes the global token, gets an adapter too, and the biases of every
    # wrapped linear train. false / none give the narrower adapter of earlier versions.
    visual_projection: bool = _f(True, doc="also adapt the visual projection (CLIP's global-token layer)")
    bias: str = _f("lora_only", choices=("none", "lora_only"),
                   doc="lora_only: the biases of the wrapped linears train too (upstream); none: they stay frozen")


@dataclass
class DataConfig:
    kind: str = _f("folder", choices=("folder", "webdataset", "csv", "jsonl", "hf", "cache"))
    path: str = _f("", doc="folder, shard pattern, CSV/JSONL file, dataset dir or cache dir")
    image_column: str = _f("image")
    text_column: str = _f("text")
    batch_size: int = _f(16, lo=1, doc="per-process batch size")
    num_workers: int = _f(0, lo=0)
    crop_scale_min: float = _f(0.9, lo=0.01, hi=1.0)
    crop_scale_max: float = _f(1.0, lo=0.01, hi=1.0)
    max_image_pixels: int = _f(64_000_000, lo=1)
    shuffle_buffer: int = _f(256, lo=1)


@dataclass
class TrainConfig:
    stage: str = _f("1", choices=tuple(STAGES), doc="see genhancer.training.stage")
    steps: int = _f(1000, lo=1)
    lr: float | None = _f(None, lo=0.0, doc="default: 1e-4 stage 1, 1e-5 stage 2 / e2e")
    weight_decay: float = _f(0.01, lo=0.0)
    betas: list[float] = _f(factory=lambda: [0.9, 0.999])
    eps: float = _f(1e-8, lo=0.0)
    warmup_steps: int = _f(10, lo=0)
    schedule: str = _f("constant", choices=("constant", "cosine"))
    grad_clip: float = _f(1.0, lo=0.0)
    grad_accum: int = _f(1, lo=1)
    mixed_precision: str = _f("auto", choices=("auto", "no", "bf16", "fp16"))
    seed: int = _f(0)
    output_dir: str = _f("runs/train")
    init_from: str = _f("", doc="stage-1 checkpoint dir (required for stage 2)")
    train_projector: bool = _f(True, doc="stage 2: keep training the projector")
    train_denoiser: bool = _f(True, doc="stage 2: keep training the denoiser")
    checkpoint_every: int = _f(500, lo=1)
    keep_last: int = _f(2, lo=1)
    log_every: int = _f(10, lo=1)
    diag_data: str = _f("", doc="folder of held-out images for the condition-usage diagnostic (own vs "
                                "shuffled condition); empty = off")
    diag_images: int = _f(64, lo=2)
    diag_every: int = _f(100, lo=1, doc="diagnostic every N steps (and at the first and last step)")
    val_every: int = _f(0, lo=0, doc="score the encoder on train.val_data every N steps and at the last step; "
                                     "0 = off (genhancer.validation)")
    val_data: str = _f("", doc="validation set (never the test benchmark): a probe labels.jsonl (or its folder) "
                               "or an MMVP-format folder (Questions.csv)")
    max_bad_steps: int = _f(5, lo=1, doc="abort after this many non-finite losses in a row (skipped steps change nothing; the run is noticed at the next log / checkpoint step)")


@dataclass(frozen=True)
class ModelConfig:
    """What :class:`~genhancer.enhancer.Enhancer` is built from: the model sections of a
    :class:`Config`. How the model is trained (``data``, ``train``) is not in it."""

    encoder: EncoderConfig
    projector: ProjectorConfig
    cond: CondConfig
    tokenizer: TokenizerConfig
    denoiser: DenoiserConfig
    objective: ObjectiveConfig
    lora: LoraConfig


@dataclass
class Config:
    name: str = "custom"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    cond: CondConfig = field(default_factory=CondConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def model(self) -> ModelConfig:
        """The sections the model is built from (no data or training knobs)."""
        return ModelConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ModelConfig)})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


# ----------------------------------------------------------------------------- validation

def _build(cls: type, data: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}{unknown[0]}"
        raise ConfigError(f"unknown config field '{where}'; known fields of "
                          f"'{prefix.rstrip('.') or 'config'}': {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        tp, where = hints[name], f"{prefix}{name}"
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: expected a mapping of fields, got {value!r}")
            kwargs[name] = _build(tp, value, where + ".")
        else:
            v = coerce(value, tp, where)
            check_range(v, fields[name].metadata, where)
            kwargs[name] = v
    obj = cls(**kwargs)
    # Defaults are validated too, so a bad default in a preset file is caught.
    return obj


def validate(cfg: Config) -> Config:
    """Cross-field checks that a single field cannot express."""
    d = cfg.data
    if d.crop_scale_min > d.crop_scale_max:
        raise ConfigError(f"data.crop_scale_min: expected <= data.crop_scale_max ({d.crop_scale_max}), "
                          f"got {d.crop_scale_min}")
    o = cfg.objective
    if o.mask_ratio_min > o.mask_ratio_max:
        raise ConfigError(f"objective.mask_ratio_min: expected <= objective.mask_ratio_max "
                          f"({o.mask_ratio_max}), got {o.mask_ratio_min}")
    # data.kind=cache with stage 2 / e2e needs a cache that holds the encoder's pixels
    # (`genhancer cache --with-pixels`); checked when the cache is opened (check_cache_fits).
    if len(cfg.train.betas) != 2:
        raise ConfigError(f"train.betas: expected two numbers, got {cfg.train.betas}")
    if (cfg.denoiser.kind == "perceiver") != (cfg.objective.kind == "masked_tokens"):
        want = ("masked_tokens" if cfg.denoiser.kind == "perceiver"
                else "rectified_flow, contrastive_rf, ddpm or contrastive_ddpm")
        raise ConfigError(f"objective.kind: denoiser '{cfg.denoiser.kind}' expects {want}, "
                          f"got '{cfg.objective.kind}'")
    if (o.kind in ("contrastive_rf", "contrastive_ddpm") or o.contrastive_weight > 0) and cfg.data.batch_size < 2:
        raise ConfigError(f"data.batch_size: the contrastive objective needs negatives from other images; expected "
                          f">= 2, got {cfg.data.batch_size}")
    if o.preserve_weight > 0 and not stage_of(cfg.train.stage).lora:
        raise ConfigError(f"objective.preserve_weight: stage {cfg.train.stage} does not train the encoder; set it "
                          "for stage 2 or e2e")
    if cfg.denoiser.kind == "sd_unet" and not cfg.denoiser.name_or_path:
        raise ConfigError("denoiser.name_or_path: sd_unet needs a Stable Diffusion pipeline dir or hub id, got ''")
    if cfg.denoiser.kind == "sd_unet" and cfg.denoiser.patch_size != 1:
        raise ConfigError(f"denoiser.patch_size: sd_unet takes latent pixels, expected 1, got {cfg.denoiser.patch_size}")
    if o.kind in ("ddpm", "contrastive_ddpm") and cfg.denoiser.kind != "sd_unet":
        raise ConfigError(f"objective.kind: {o.kind} reads the noise schedule of a Stable Diffusion pipeline; "
                          f"expected denoiser.kind=sd_unet, got '{cfg.denoiser.kind}'")
    if cfg.denoiser.init_from and cfg.denoiser.kind != "flow_dit":
        raise ConfigError(f"denoiser.init_from: loads a FLUX checkpoint into flow_dit, but denoiser.kind is "
                          f"'{cfg.denoiser.kind}'")
    if (cfg.tokenizer.kind == "vq") != (cfg.denoiser.kind == "perceiver"):
        raise ConfigError(f"tokenizer.kind: denoiser '{cfg.denoiser.kind}' needs a "
                          f"{'vq' if cfg.denoiser.kind == 'perceiver' else 'continuous (taef2, vae, pixels)'} "
                          f"latent space, got '{cfg.tokenizer.kind}'")
    return cfg


# ----------------------------------------------------------------------------- presets / YAML

def _preset_dir():
    return resources.files("genhancer") / "configs"


def list_presets() -> list[str]:
    return sorted(p.name[:-5] for p in _preset_dir().iterdir() if p.name.endswith(".yaml"))


def _read_yaml_text(text: str, where: str) -> dict:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _load_layer(name_or_path: str, seen: tuple = ()) -> dict:
    """Load a preset name or YAML path, following ``base:`` links."""
    if name_or_path in seen:
        raise ConfigError(f"config '{name_or_path}': 'base' links form a cycle")
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist")
        data = _read_yaml_text(path.read_text(), str(path))
    else:
        res = _preset_dir() / f"{name_or_path}.yaml"
        if not res.is_file():
            raise ConfigError(f"unknown preset '{name_or_path}'; expected a YAML path or one of: "
                              f"{', '.join(list_presets())}")
        data = _read_yaml_text(res.read_text(), f"preset '{name_or_path}'")
        data.setdefault("name", name_or_path)
    base = data.pop("base", None)
    if base:
        parent = _load_layer(str(base), seen + (name_or_path,))
        parent.pop("name", None)
        data = _merge(parent, data)
    return data


def field_type(keys: list[str]) -> Any:
    """The annotation of the config field ``keys`` names (``["train", "stage"]`` -> str);
    None for a section or a name that is no field (``_build`` reports those)."""
    cls: Any = Config
    for i, k in enumerate(keys):
        if not dataclasses.is_dataclass(cls):
            return None
        tp = typing.get_type_hints(cls).get(k)
        if tp is None:
            return None
        if i == len(keys) - 1:
            return None if dataclasses.is_dataclass(tp) else tp
        cls = tp
    return None


_YAML_NULLS = ("null", "Null", "NULL", "~")


def _text(raw: str) -> str:
    """A string field's value: the text itself; quotes around all of it are removed (so
    the old spelling `train.mixed_precision='no'` still means no)."""
    text = raw.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        try:
            unquoted = yaml.safe_load(text)
        except yaml.YAMLError:
            return text
        if isinstance(unquoted, str):
            return unquoted
    return text


def _read_as(raw: str, tp: Any) -> Any:
    """The override text ``raw`` read as annotation ``tp`` (see the module docstring).

    YAML 1.1 would read ``no`` / ``off`` / ``null`` as False / None and refuse them for a
    string field, whose choices may well be such words (train.mixed_precision=no)."""
    args = typing.get_args(tp)
    if tp is str:
        return _text(raw)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and set(args) == {str, type(None)}:
        return None if raw.strip() in _YAML_NULLS else _text(raw)
    if typing.get_origin(tp) is list and args == (str,):
        try:  # the base loader keeps every scalar as text: [q_proj, no] -> ["q_proj", "no"]
            return yaml.load(raw, Loader=yaml.BaseLoader)
        except yaml.YAMLError:
            return raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def parse_override(item: str) -> tuple[list[str], Any]:
    """``section.field=value`` -> (keys, value), the value read as the field's type."""
    if "=" not in item:
        raise ConfigError(f"override '{item}': expected section.field=value")
    key, raw = item.split("=", 1)
    keys = key.strip().split(".")
    return keys, ("" if raw == "" else _read_as(raw, field_type(keys)))


def load_config(preset_or_yaml: str | None = None, overrides: list[str] | tuple = (),
                extra: dict | None = None) -> Config:
    """Build a validated :class:`Config`.

    ``extra`` is a nested dict applied after the preset and before ``overrides``.
    """
    data = _load_layer(preset_or_yaml) if preset_or_yaml else {}
    if extra:
        data = _merge(data, extra)
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{k}' is not a section")
        node[keys[-1]] = value
    return validate(_build(Config, data, ""))


def config_from_dict(data: dict) -> Config:
    return validate(_build(Config, data, ""))


def default_lr(cfg: Config) -> float:
    """``train.lr``, else the stage's default (the Stage table)."""
    if cfg.train.lr is not None:
        return cfg.train.lr
    return stage_of(cfg.train.stage).default_lr
