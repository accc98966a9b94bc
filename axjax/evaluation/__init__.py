"""Evaluation: concept-detection metrics (ROC AUC, hard-negative accuracy, max-F1) matching AxBench per concept."""

from axjax.evaluation.detection_metrics import (CATEGORIES, F1Result, HardNegativeResult, RocResult,
                                                detection_report, hard_negative_accuracy, imbalanced_f1,
                                                imbalanced_negatives, max_f1_stats, roc_metrics, round_scores)
