"""Objectives: one per file, each a pure ``loss(...) -> dict[str, Tensor]`` of named parts."""

from vlmbed.objectives import infonce

OBJECTIVES = {"infonce": infonce.loss}

__all__ = ["OBJECTIVES", "infonce"]
