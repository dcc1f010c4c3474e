import pytest

from genhancer.config import Config, list_presets, load_config
from genhancer.errors import ConfigError


def test_defaults_and_override_types():
    cfg = load_config(None, ["train.steps=7", "objective.logit_normal_scale=2", "train.stage=2",
                             "lora.target_modules=[q_proj,v_proj]"])
    assert cfg.train.steps == 7
    assert cfg.objective.logit_normal_scale == 2.0 and isinstance(cfg.objective.logit_normal_scale, float)
    assert cfg.train.stage == "2"
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.lora.r == 16 and cfg.lora.alpha == 16 and cfg.lora.dropout == 0.1


@pytest.mark.parametrize("override, needle", [
    ("train.stpes=3", "unknown config field 'train.stpes'"),
    ("train.steps=abc", "train.steps: expected an integer"),
    ("train.steps=0", "train.steps: expected a value >= 1"),
    ("cond.local_token_fraction=1.5", "cond.local_token_fraction: expected a value <= 1.0"),
    ("objective.timestep_sampler=beta", "objective.timestep_sampler: expected one of logit_normal, uniform"),
    ("train.steps", "expected section.field=value"),
    ("nosuch.x=1", "unknown config field 'nosuch'"),
])
def test_bad_overrides_name_the_field(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_yaml_base_chain_and_save_roundtrip(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("train:\n  steps: 11\n  lr: 0.001\n")
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {base}\ntrain:\n  steps: 22\n")
    cfg = load_config(str(child), ["train.seed=5"])
    assert (cfg.train.steps, cfg.train.lr, cfg.train.seed) == (22, 0.001, 5)
    out = tmp_path / "resolved.yaml"
    cfg.save(out)
    again = load_config(str(out))
    assert again.to_dict() == cfg.to_dict()


def test_presets_load_and_unknown_preset():
    names = list_presets()
    assert names, "the package must ship presets"
    for n in names:
        assert isinstance(load_config(n), Config)
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        load_config("nope")


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="objective.kind"):
        load_config(None, ["denoiser.kind=perceiver", "tokenizer.kind=vq"])
    with pytest.raises(ConfigError, match="tokenizer.kind"):
        load_config(None, ["denoiser.kind=perceiver", "objective.kind=masked_tokens"])
    with pytest.raises(ConfigError, match="crop_scale_min"):
        load_config(None, ["data.crop_scale_min=0.95", "data.crop_scale_max=0.9"])
    # Whether a cache can serve stage 2 / e2e depends on what it holds (pixels or not):
    # checked when it is opened (tests/test_train.py), not at config time.
    for stage in ("1", "2", "e2e"):
        assert load_config(None, ["data.kind=cache", f"train.stage={stage}"]).data.kind == "cache"


def _string_choices() -> list[tuple[str, str]]:
    """(section.field, choice) for every string field of Config with a fixed set of choices,
    read off the dataclass fields themselves, so a new field is covered without editing this."""
    import dataclasses
    import typing

    found = []
    for section in dataclasses.fields(Config):
        cls = typing.get_type_hints(Config)[section.name]
        if not dataclasses.is_dataclass(cls):
            continue
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if str in (hints[f.name], *typing.get_args(hints[f.name])) and f.metadata.get("choices"):
                found += [(f"{section.name}.{f.name}", str(c)) for c in f.metadata["choices"]]
    return found


@pytest.mark.parametrize("key, choice", _string_choices())
def test_every_choice_of_a_string_field_is_accepted_as_an_override(key, choice):
    from genhancer.config import _build, parse_override

    keys, value = parse_override(f"{key}={choice}")
    assert value == choice  # the text itself, not YAML's reading of it (no -> False, null -> None)
    section, name = keys
    # _build checks the type and the choices; the cross-field checks of load_config would
    # refuse a lone denoiser.kind=perceiver, which is no concern of the parser.
    cfg = _build(Config, {section: {name: value}}, "")
    assert getattr(getattr(cfg, section), name) == choice


def test_overrides_are_read_as_the_fields_type():
    from genhancer.config import _read_as, config_from_dict

    cfg = load_config(None, ["train.mixed_precision=no", "data.path=null", "train.init_from=off",
                             "lora.target_modules=[q_proj, no]", "cond.shuffle=true", "train.train_denoiser=false",
                             "encoder.image_size=null", "train.output_dir='runs/x y'"])
    assert cfg.train.mixed_precision == "no" and cfg.data.path == "null" and cfg.train.init_from == "off"
    assert cfg.lora.target_modules == ["q_proj", "no"]
    assert cfg.cond.shuffle is True and cfg.train.train_denoiser is False and cfg.encoder.image_size is None
    assert cfg.train.output_dir == "runs/x y"
    # An optional string field (none in Config today) reads null / ~ as None, anything else as text.
    assert _read_as("null", str | None) is None and _read_as("~", str | None) is None
    assert _read_as("no", str | None) == "no"
    with pytest.raises(ConfigError, match=r"quote the word"):  # a YAML file still reads `no` as a boolean
        config_from_dict({"train": {"mixed_precision": False}})
