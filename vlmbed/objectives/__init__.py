"""Objectives: one file per objective, one row each in the plain :data:`OBJECTIVES` table.

``OBJECTIVES[name]`` is an :class:`~vlmbed.objectives.base.Objective`: the config class a recipe's
``objectives: [{name: ..., weight: ..., ...}]`` entry is read into, and the function
``fn(cfg, outputs, batch) -> dict[str, Tensor]`` of named, unweighted parts (the contract is in
:mod:`vlmbed.objectives.base`). A new objective is a file with a config class and a function, then
:func:`register` (from vlmbed, or from user code before the recipe is loaded).
"""

from vlmbed.objectives import bridge, distill, hardneg, infonce, judge, mae, mlm, muco
from vlmbed.objectives.base import ContrastiveView, Objective, ObjectiveSettings

OBJECTIVES: dict[str, Objective] = {o.name: o for o in (infonce.OBJECTIVE, mlm.OBJECTIVE, mae.OBJECTIVE,
                                                        bridge.OBJECTIVE, distill.OBJECTIVE, hardneg.OBJECTIVE,
                                                        judge.OBJECTIVE, muco.OBJECTIVE)}


def register(objective: Objective, replace: bool = False) -> Objective:
    """Add ``objective`` to the table under its config's ``name``; refuses to shadow one unless ``replace``."""
    if objective.name in OBJECTIVES and not replace and OBJECTIVES[objective.name] is not objective:
        raise ValueError(f"an objective named {objective.name!r} is already registered (replace=True to swap it)")
    OBJECTIVES[objective.name] = objective
    return objective


def lookup(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise KeyError(f"unknown objective {name!r}; known: {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name]


__all__ = ["OBJECTIVES", "ContrastiveView", "bridge", "distill", "hardneg", "judge", "Objective", "ObjectiveSettings", "infonce", "lookup", "mae", "mlm",
           "muco", "register"]
