"""Vision-language encoders (CLIP, MetaCLIP, SigLIP) behind one interface."""

from genhancer.encoders.hf import VisionLanguageEncoder, load_encoder
from genhancer.encoders.sources import ModelRef, parse_model_ref

__all__ = ["ModelRef", "VisionLanguageEncoder", "load_encoder", "parse_model_ref"]
