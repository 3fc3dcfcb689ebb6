"""Evaluation: suites -> encode unique items -> score -> metrics -> results."""

from vlmbed.eval.run import evaluate

__all__ = ["evaluate"]
