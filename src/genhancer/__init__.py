"""genhancer: generative feedback that makes CLIP-family vision encoders see fine detail."""

__version__ = "0.1.0"

from genhancer.errors import GenHancerError  # noqa: E402

__all__ = ["GenHancerError", "__version__"]
