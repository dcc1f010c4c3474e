"""`genhancer export CKPT OUT --into-llava LLAVA`: a tiny random LLaVA (CLIP vision tower +
Llama text model, tokenizer, processor, chat template) built offline gets the enhanced
vision tower; everything else stays the LLaVA's."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from genhancer.cli import main
from genhancer.encoders.sources import vision_state
from genhancer.export import load_enhanced_encoder
from test_export import _fake_stage2_checkpoint

WORDS = ["<unk>", "<s>", "</s>", "<pad>", "<image>", "USER:", "ASSISTANT:", "what", "is", "this", "a", "red", "star"]


def build_tiny_llava(out, vision_config, seed=0, max_shard_size=None, kind="llava"):
    """A LlavaForConditionalGeneration (or LlavaNext) with a word-level tokenizer holding
    '<image>', a LlavaProcessor and a chat template, all written with save_pretrained."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"})
    text = transformers.LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                    num_attention_heads=2, num_key_value_heads=2, pad_token_id=3, bos_token_id=1,
                                    eos_token_id=2)
    torch.manual_seed(seed)
    if kind == "llava":
        cfg = transformers.LlavaConfig(vision_config=vision_config, text_config=text, image_token_index=4,
                                       vision_feature_layer=-2, vision_feature_select_strategy="default")
        model = transformers.LlavaForConditionalGeneration(cfg)
    else:
        s = vision_config.image_size
        cfg = transformers.LlavaNextConfig(vision_config=vision_config, text_config=text, image_token_index=4,
                                           image_grid_pinpoints=[[s, s]], vision_feature_layer=-2)
        model = transformers.LlavaNextForConditionalGeneration(cfg)
    model.save_pretrained(out, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    if kind == "llava":
        s = vision_config.image_size
        ip = transformers.CLIPImageProcessor(size={"shortest_edge": s}, crop_size={"height": s, "width": s})
        transformers.LlavaProcessor(
            image_processor=ip, tokenizer=tokenizer, patch_size=vision_config.patch_size,
            vision_feature_select_strategy="default", num_additional_image_tokens=1,
            chat_template="{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}").save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_clip_dir):
    from transformers import CLIPConfig

    root = tmp_path_factory.mktemp("llava")
    ckpt = _fake_stage2_checkpoint(tiny_clip_dir, root / "ckpt")
    vc = CLIPConfig.from_pretrained(tiny_clip_dir).vision_config
    # Sharded, so that shards without a vision tensor (copied) and with one (rewritten) both occur.
    llava = build_tiny_llava(root / "llava", vc, max_shard_size="150KB")
    (llava / "README.md").write_text("---\nlicense: llama2\n---\n# tiny llava\n")
    return {"root": root, "ckpt": ckpt, "llava": llava, "vc": vc}


def _tensors(d):
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        with safe_open(str(f), "pt") as sf:
            out.update({k: sf.get_tensor(k) for k in sf.keys()})
    return out


def test_into_llava(setup, tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    llava, out = setup["llava"], tmp_path / "enhanced-llava"
    (llava / "pytorch_model.bin").write_bytes(b"\x80\x04stale pickled copy")   # beside the safetensors: not read
    assert main(["export", str(setup["ckpt"]), str(out), "--into-llava", str(llava)]) == 0
    shards = sorted(p.name for p in llava.glob("*.safetensors"))
    assert len(shards) > 2 and (llava / "model.safetensors.index.json").is_file()
    before, after = _tensors(llava), _tensors(out)
    tower_files = {v for k, v in json.loads((llava / "model.safetensors.index.json").read_text())["weight_map"].items()
                   if "vision_tower." in k}
    # Every other file, processor / tokenizer / chat template / config / index included: byte for byte.
    for f in sorted(p for p in llava.iterdir() if p.name not in tower_files | {"README.md", "pytorch_model.bin"}):
        assert (out / f.name).read_bytes() == f.read_bytes(), f.name
    assert not (out / "pytorch_model.bin").exists()   # it would still hold the original tower
    assert {"processor_config.json", "chat_template.jinja", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert before.keys() == after.keys()
    for k in before:
        if "vision_tower." not in k:
            assert torch.equal(before[k], after[k]), k

    enhanced = vision_state(load_enhanced_encoder(setup["ckpt"]).vision_tower)
    model = LlavaForConditionalGeneration.from_pretrained(out).eval()
    orig = LlavaForConditionalGeneration.from_pretrained(llava).eval()
    tower = vision_state(model.model.vision_tower)
    assert tower.keys() <= enhanced.keys()
    for k, v in tower.items():
        assert torch.equal(v, enhanced[k]), k
    assert not all(torch.equal(v, vision_state(orig.model.vision_tower)[k]) for k, v in tower.items())
    orig_state = orig.state_dict()
    for k, v in model.state_dict().items():
        if ".vision_tower." not in f".{k}":
            assert torch.equal(v, orig_state[k]), k

    processor = AutoProcessor.from_pretrained(out)
    inputs = processor(images=Image.new("RGB", (40, 40), (200, 0, 0)),
                       text="USER: <image> what is this ASSISTANT:", return_tensors="pt")
    with torch.no_grad():
        gen = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert gen.shape[1] == inputs["input_ids"].shape[1] + 3
    card = (out / "README.md").read_text()
    assert "license: llama2" in card and "- llava" in card and "LlavaForConditionalGeneration" in card


def test_into_llava_next(setup, tmp_path):
    """LlavaNext keeps the same vision_tower contract; the swap is the same."""
    from transformers import LlavaNextForConditionalGeneration

    nxt = build_tiny_llava(tmp_path / "next", setup["vc"], kind="llava_next")
    assert main(["export", str(setup["ckpt"]), str(tmp_path / "out"), "--into-llava", str(nxt)]) == 0
    model = LlavaNextForConditionalGeneration.from_pretrained(tmp_path / "out")
    enhanced = vision_state(load_enhanced_encoder(setup["ckpt"]).vision_tower)
    assert all(torch.equal(v, enhanced[k]) for k, v in vision_state(model.model.vision_tower).items())


def _refused(args, out, capsys, *needles):
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(n in err for n in needles), err
    assert not out.exists() and not list(out.parent.glob(f".tmp-{out.name}*"))


@pytest.mark.parametrize("change, needle", [
    ({"hidden_size": 32, "intermediate_size": 128}, "vision_config.hidden_size is 32 in the LLaVA checkpoint but 64"),
    ({"image_size": 64}, "vision_config.image_size is 64 in the LLaVA checkpoint but 32"),
    ({"patch_size": 4}, "vision_config.patch_size is 4 in the LLaVA checkpoint but 8"),
    ({"num_hidden_layers": 3}, "vision_config.num_hidden_layers is 3 in the LLaVA checkpoint but 2"),
])
def test_mismatched_tower_refused(setup, tmp_path, capsys, change, needle):
    from transformers import CLIPVisionConfig

    vc = CLIPVisionConfig(**{**setup["vc"].to_dict(), **change})
    other = build_tiny_llava(tmp_path / "other", vc)
    out = tmp_path / "out"
    _refused(["export", str(setup["ckpt"]), str(out), "--into-llava", str(other)], out, capsys, needle)


def test_not_a_llava_refused(setup, tiny_clip_dir, tmp_path, capsys):
    out = tmp_path / "out"
    _refused(["export", str(setup["ckpt"]), str(out), "--into-llava", str(tiny_clip_dir)], out, capsys,
             "not a LLaVA checkpoint", "model_type is 'clip'")
    _refused(["export", str(setup["ckpt"]), str(out), "--into-llava", str(tmp_path / "nowhere")], out, capsys,
             "does not exist")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_bytes((setup["llava"] / "config.json").read_bytes())
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not read")
    _refused(["export", str(setup["ckpt"]), str(out), "--into-llava", str(pickled)], out, capsys,
             "pickled weights (pytorch_model.bin)", "safetensors")
    _refused(["export", str(setup["ckpt"]), str(out), "--into-llava", str(setup["llava"]), "--vision-only"], out,
             capsys, "--vision-only")
