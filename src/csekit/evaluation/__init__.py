"""SentEval-exact STS evaluation: loaders, aggregation, alignment / uniformity, reports."""

from csekit.evaluation.loaders import StsPairs, load_task, resolve_data_dir
from csekit.evaluation.metrics import alignment, pair_cosine, spearman, uniformity
from csekit.evaluation.sts import StsResult, evaluate_sts
from csekit.evaluation.tasks import DEV_TASKS, TASKS

__all__ = [
           "DEV_TASKS",
           "TASKS",
           "StsPairs",
           "StsResult",
           "alignment",
           "evaluate_sts",
           "load_task",
           "pair_cosine",
           "resolve_data_dir",
           "spearman",
           "uniformity",
]
