"""Objectives: one per file, each a pure ``loss(...) -> dict[str, Tensor]`` of named parts."""

from vlmbed.objectives import infonce, mae, mlm

OBJECTIVES = {"infonce": infonce.loss, "mlm": mlm.loss, "mae": mae.loss}

__all__ = ["OBJECTIVES", "infonce", "mae", "mlm"]
