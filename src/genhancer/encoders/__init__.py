"""Encoders behind one ``encode_image`` interface: vision-language (CLIP, MetaCLIP, SigLIP)
and image-only (DINOv2, ViT)."""

from genhancer.encoders.hf import VisionLanguageEncoder, load_encoder
from genhancer.encoders.sources import ModelRef, parse_model_ref
from genhancer.encoders.vision_only import VisionEncoder

__all__ = ["ModelRef", "VisionEncoder", "VisionLanguageEncoder", "load_encoder", "parse_model_ref"]
