"""Vision-language encoders (CLIP, MetaCLIP, SigLIP) behind one interface."""

from genhancer.encoders.hf import VisionLanguageEncoder, load_encoder

__all__ = ["VisionLanguageEncoder", "load_encoder"]
