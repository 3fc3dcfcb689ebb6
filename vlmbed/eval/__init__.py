"""Evaluation: suites -> check data -> encode unique items (cached) -> score -> metrics -> results.

Suites: ``digits`` and ``scenes`` (built in), ``mmeb`` (MMEB v1), ``vidore`` (ViDoRe v1 + v2), ``mbeir`` (M-BEIR), ``mmeb-v2`` (MMEB-V2: image, video, visual documents).
See docs/evaluation.md for formats, metrics, tie rules and aggregation.
"""

from vlmbed.eval.run import SUITES, check_suite, evaluate, load_suite

__all__ = ["evaluate", "check_suite", "load_suite", "SUITES"]
