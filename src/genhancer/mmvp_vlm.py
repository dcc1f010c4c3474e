"""The MMVP-VLM benchmark's on-disk layout and category order, in one torch-free place.

Both the evaluator (``genhancer.eval.mmvp``, which reads a benchmark) and the demo world
(``genhancer.demo.world``, which writes one) import these, so the two cannot drift apart;
it lives outside ``eval`` because importing that package loads torch, which the world
generator does not need.
"""

from __future__ import annotations

# Type folder names exactly as upstream spells them, in file order: categories are
# positional (pairs 0-14 are the first category, 15-29 the second, ...).
CATEGORIES = (
    "Orientation and Direction",
    "Presence of Specific Features",
    "State and Condition",
    "Quantity and Count",
    "Positional and Relational Context",
    "Color and Appearance",
    "Structural Characteristics",
    "Texts",
    "Viewpoint and Perspective",
)
PAIRS_PER_CATEGORY = 15
QUESTIONS_FILE = "Questions.csv"
IMAGES_DIR = "MLLM_VLM Images"
# Exactly these columns: the upstream scorers unpack each row into three names.
REQUIRED_COLUMNS = ("Question ID", "Type", "Statement")
