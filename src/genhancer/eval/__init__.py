"""Evaluation: MMVP-VLM (the fine-detail benchmark), zero-shot classification and retrieval
(the skills an enhanced encoder must keep), image-only fine-grained metrics (blind pairs,
k-NN), and a before / after comparison report."""

from genhancer.eval.compare import format_table, run_compare
from genhancer.eval.finegrained import run_blind_pairs, run_knn
from genhancer.eval.mmvp import CATEGORIES, run_mmvp
from genhancer.eval.retrieval import run_retrieval
from genhancer.eval.stats import bootstrap_ci, mcnemar_exact, paired_bootstrap_ci
from genhancer.eval.zeroshot import DEFAULT_TEMPLATES, run_zeroshot

__all__ = ["CATEGORIES", "DEFAULT_TEMPLATES", "bootstrap_ci", "format_table", "mcnemar_exact",
           "paired_bootstrap_ci", "run_blind_pairs", "run_compare", "run_knn", "run_mmvp", "run_retrieval",
           "run_zeroshot"]
