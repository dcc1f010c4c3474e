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
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

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
    name_or_path: str = _f("", doc="hub id or local directory of a CLIP / SigLIP checkpoint")
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
    kind: str = _f("flow_dit", choices=("flow_dit", "perceiver"))
    preset: str = _f("tiny", doc="size preset of the chosen denoiser kind")
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


@dataclass
class ObjectiveConfig:
    kind: str = _f("rectified_flow", choices=("rectified_flow", "masked_tokens"))
    # rectified flow
    timestep_sampler: str = _f("logit_normal", choices=("logit_normal", "uniform"))
    logit_normal_scale: float = _f(1.0, lo=1e-6, doc="s in t = sigmoid(s * N(m, 1))")
    logit_normal_mean: float = _f(0.0)
    sample_steps: int = _f(25, lo=1)
    # masked tokens
    mask_schedule: str = _f("uniform_range", choices=("uniform_range", "cosine", "fixed"))
    mask_ratio_min: float = _f(0.5, lo=0.0, hi=1.0)
    mask_ratio_max: float = _f(0.9, lo=0.0, hi=1.0)


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

def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


class _NonFinite(ConfigError):
    """A number that is nan or infinite: no config field accepts one."""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp``; allow int -> float and str digits for str stage."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, where)
            except _NonFinite:
                raise  # the truer message than "expected float or null"
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected null, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        (inner,) = typing.get_args(tp)
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML reads `1e-3` (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(number):
            # No field means anything by nan or inf (.inf, .nan, "nan", "1e999" all land here).
            raise _NonFinite(f"{where}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):  # `stage: 1` in YAML
            return str(value)
        if isinstance(value, bool):  # a YAML file's `no` / `off` / `yes` / `on` (overrides keep the text)
            raise ConfigError(f"{where}: expected a string, got {value!r} (YAML reads no, off, yes and on as "
                              "booleans; quote the word, e.g. \"no\")")
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {tp}")


def _check_range(value: Any, meta: dict, where: str) -> None:
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: expected one of {', '.join(map(str, choices))}; got {value!r}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if lo is not None and value < lo:
            raise ConfigError(f"{where}: expected a value >= {lo}, got {value!r}")
        if hi is not None and value > hi:
            raise ConfigError(f"{where}: expected a value <= {hi}, got {value!r}")


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
            v = _coerce(value, tp, where)
            _check_range(v, fields[name].metadata, where)
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
        raise ConfigError(f"objective.kind: denoiser '{cfg.denoiser.kind}' expects "
                          f"'{'masked_tokens' if cfg.denoiser.kind == 'perceiver' else 'rectified_flow'}', "
                          f"got '{cfg.objective.kind}'")
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
