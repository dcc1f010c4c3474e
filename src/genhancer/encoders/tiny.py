"""Tiny random CLIP / SigLIP (with real tokenizers) and DINOv2 / ViT checkpoints, built offline.

Tests and the embedded demo cannot download a checkpoint, so they build one in code:
a small config of the real transformers class, a real image processor and a tokenizer
trained on the project's own captions (byte-level BPE for CLIP, SentencePiece for
SigLIP), all written with ``save_pretrained`` so they are loaded back through exactly
the path a user takes with a real checkpoint.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch

DEFAULT_TEXTS = [
    "a photo of a red star", "a blue circle with a small notch", "two markers left of a house",
    "a green tree on a striped background", "the digit 3 written on a cup", "a car facing right",
    "an open box", "a closed box", "a yellow key above a fish", "three dots below a square",
]


def train_clip_bpe(texts: Iterable[str], vocab_size: int = 1000):
    """Train a CLIP-style byte-level BPE (``</w>`` word ends) and return a ``CLIPTokenizer``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  end_of_word_suffix="</w>", show_progress=False)
    tok.train_from_iterator([t.lower() for t in texts], trainer)
    with tempfile.TemporaryDirectory() as d:
        tok.model.save(d)
        lines = Path(d, "merges.txt").read_text().splitlines()[1:]
    merges = [tuple(line.split(" ")) for line in lines if line]
    # Like OpenAI's vocabulary: every byte symbol, alone and as a word end, then one
    # entry per merge, then the two specials. Guarantees no out-of-vocabulary input.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = alphabet + [c + "</w>" for c in alphabet] + [a + b for a, b in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def train_siglip_spm(texts: Iterable[str], vocab_size: int = 500):
    """Train a SentencePiece unigram model and return a ``SiglipTokenizer``."""
    import sentencepiece as spm
    from transformers import SiglipTokenizer

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([t.lower() for t in texts]), model_writer=buf, vocab_size=vocab_size,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>",
        eos_piece="</s>", unk_piece="<unk>", hard_vocab_limit=False, minloglevel=2)
    d = tempfile.mkdtemp(prefix="genhancer-spm-")
    path = Path(d, "spiece.model")
    path.write_bytes(buf.getvalue())
    return SiglipTokenizer(vocab_file=str(path), model_max_length=64)


def build_tiny_clip(out_dir: str | Path, texts: Iterable[str] | None = None, image_size: int = 32,
                    patch_size: int = 8, width: int = 64, layers: int = 2, heads: int = 4,
                    text_width: int = 64, text_layers: int = 2, projection_dim: int = 32,
                    vocab_size: int = 1000, seed: int = 0, text_heads: int | None = None) -> Path:
    """Write a random tiny ``CLIPModel`` + processor + tokenizer to ``out_dir``
    (``text_heads`` defaults to ``heads``)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    texts = list(texts or DEFAULT_TEXTS)
    tokenizer = train_clip_bpe(texts, vocab_size=vocab_size)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=text_width, intermediate_size=4 * text_width,
                         num_hidden_layers=text_layers, num_attention_heads=text_heads or heads,
                         max_position_embeddings=77,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                           num_attention_heads=heads, image_size=image_size, patch_size=patch_size),
        projection_dim=projection_dim)
    torch.manual_seed(seed)
    model = CLIPModel(cfg)
    processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                   crop_size={"height": image_size, "width": image_size})
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_tiny_siglip(out_dir: str | Path, texts: Iterable[str] | None = None, image_size: int = 32,
                      patch_size: int = 8, width: int = 64, layers: int = 2, heads: int = 4,
                      text_layers: int = 2, vocab_size: int = 500, seed: int = 0) -> Path:
    """Write a random tiny ``SiglipModel`` + processor + tokenizer to ``out_dir``."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    texts = list(texts or DEFAULT_TEXTS)
    tokenizer = train_siglip_spm(texts * 20, vocab_size=vocab_size)
    cfg = SiglipConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width,
                         num_hidden_layers=text_layers, num_attention_heads=heads, max_position_embeddings=64, bos_token_id=None,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id),
        vision_config=dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                           num_attention_heads=heads, image_size=image_size, patch_size=patch_size))
    torch.manual_seed(seed)
    model = SiglipModel(cfg)
    processor = SiglipImageProcessor(size={"height": image_size, "width": image_size})
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_tiny_vision(out_dir: str | Path, kind: str = "dinov2", image_size: int = 32, patch_size: int = 8,
                      width: int = 64, layers: int = 2, heads: int = 4, registers: int = 2, seed: int = 0) -> Path:
    """Write a random tiny image-only model + its image processor to ``out_dir``: ``kind``
    "dinov2" (``Dinov2Model``, a ``BitImageProcessor`` that resizes the shortest edge then
    center-crops, as DINOv2's does), "dinov2_with_registers" (``registers`` register tokens)
    or "vit" (``ViTModel``, a ``ViTImageProcessor`` that resizes to a square)."""
    import transformers

    common = dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                  num_attention_heads=heads, image_size=image_size, patch_size=patch_size)
    if kind == "vit":
        cfg, model_cls = transformers.ViTConfig(**common), transformers.ViTModel
        processor = transformers.ViTImageProcessor(size={"height": image_size, "width": image_size})
    else:
        if kind == "dinov2":
            cfg, model_cls = transformers.Dinov2Config(**common), transformers.Dinov2Model
        else:
            cfg = transformers.Dinov2WithRegistersConfig(num_register_tokens=registers, **common)
            model_cls = transformers.Dinov2WithRegistersModel
        processor = transformers.BitImageProcessor(size={"shortest_edge": image_size + image_size // 8},
                                                   crop_size={"height": image_size, "width": image_size},
                                                   image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    torch.manual_seed(seed)
    model = model_cls(cfg)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out
