r"""Similarity-distribution distillation (UniME stage 1: textual discriminative knowledge distillation).

For the student's query embeddings :math:`s_i` and document embeddings :math:`s'_j` of a (gathered) batch,
and a frozen teacher's embeddings :math:`t_i, t'_j` of the same texts (computed offline, read by content
key; :mod:`vlmbed.train.teacher`), every row is a distribution over the batch's documents:

.. math::

    P_s(i)_j = \mathrm{softmax}_j\big(\hat s_i\cdot \hat s'_j/\tau_s\big), \qquad
    P_t(i)_j = \mathrm{softmax}_j\big(\hat t_i\cdot \hat t'_j/\tau_t\big)

    \mathcal{L} = \frac{1}{B}\sum_i \mathrm{KL}\big(P_t(i)\,\|\,P_s(i)\big)
        \quad(\texttt{direction: teacher\_student})

with :math:`\hat x = x/\lVert x\rVert`. ``student_teacher`` is :math:`\mathrm{KL}(P_s\|P_t)` (the paper's
notation, Eq. 2), ``symmetric`` the mean of both. Only relative similarities are distilled, so the teacher's
dimension may differ from the student's. The paper sums over rows; here the rows are averaged (the
loop's convention), a constant factor the learning rate absorbs.

Rows are this process's queries, columns every process's documents (positives, then hard negatives), as
InfoNCE sees them; the teacher vectors travel as batch fields gathered the same way (``teacher_query``,
``teacher_positive``, ``teacher_negatives``, made by the ``teacher`` collator).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from vlmbed.objectives.base import ContrastiveView, Objective, ObjectiveSettings

DIRECTIONS = ("teacher_student", "student_teacher", "symmetric")


class SimilarityKDConfig(ObjectiveSettings):
    name: Literal["similarity_kd"] = "similarity_kd"
    weight: float = 1.0
    teacher: str  # folder of cached teacher vectors (`vlmbed teacher embed ... --out FOLDER`)
    temperature: float = Field(0.05, gt=0)  # student's tau (the paper does not give one)
    teacher_temperature: float | None = Field(None, gt=0)  # teacher's tau (None: the student's)
    # teacher_student: KL(P_t || P_s) (usual KD); student_teacher: KL(P_s || P_t) (paper's notation); symmetric
    direction: Literal["teacher_student", "student_teacher", "symmetric"] = "teacher_student"


def similarity_logits(queries: torch.Tensor, documents: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, M) cosine similarities / tau of (B, d) queries and (M, d) documents."""
    return F.normalize(queries.float(), dim=-1) @ F.normalize(documents.float(), dim=-1).T / temperature


def kd_loss(student_q: torch.Tensor, student_docs: torch.Tensor, teacher_q: torch.Tensor, teacher_docs: torch.Tensor,
            temperature: float = 0.05, teacher_temperature: float | None = None,
            direction: str = "teacher_student") -> torch.Tensor:
    """Mean over rows of the KL divergence between the teacher's and the student's row distributions."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if student_docs.shape[0] != teacher_docs.shape[0] or student_q.shape[0] != teacher_q.shape[0]:
        raise ValueError(f"student ({student_q.shape[0]} x {student_docs.shape[0]}) and teacher "
                         f"({teacher_q.shape[0]} x {teacher_docs.shape[0]}) similarity matrices differ in shape")
    log_s = F.log_softmax(similarity_logits(student_q, student_docs, temperature), dim=-1)  # (B, M)
    tau_t = teacher_temperature or temperature
    log_t = F.log_softmax(similarity_logits(teacher_q, teacher_docs, tau_t).detach(), dim=-1)  # (B, M)
    ts = (log_t.exp() * (log_t - log_s)).sum(-1).mean()  # KL(P_t || P_s)
    if direction == "teacher_student":
        return ts
    st = (log_s.exp() * (log_s - log_t)).sum(-1).mean()  # KL(P_s || P_t)
    return st if direction == "student_teacher" else 0.5 * (ts + st)


def objective(cfg: SimilarityKDConfig, view: ContrastiveView, batch: dict | None = None) -> dict[str, torch.Tensor]:
    """The table's entry: ``kd`` over this process's queries and every process's documents."""
    if "teacher_query" not in view.local or "teacher_positive" not in view.fields:
        raise ValueError("similarity_kd needs the teacher vectors as batch fields: its stage must use the "
                         "`teacher` collator (set by the objective; is another objective of the stage asking "
                         "for a different one?)")
    docs, teacher_docs = view.positive, view.fields["teacher_positive"]  # (P, d), (P, d_t)
    if view.negatives is not None and view.negatives.shape[0]:
        docs = torch.cat([docs, view.negatives])  # (P + N, d)
        teacher_docs = torch.cat([teacher_docs, view.fields["teacher_negatives"]])  # (P + N, d_t)
    teacher_q = view.local["teacher_query"].to(view.query.device)
    loss = kd_loss(view.query, docs, teacher_q, teacher_docs.to(view.query.device), cfg.temperature,
                   cfg.teacher_temperature, cfg.direction)
    return {"kd": loss}


OBJECTIVE = Objective(
    config=SimilarityKDConfig, fn=objective, kind="contrastive",
    fields={"teacher_query": "query", "teacher_positive": "query", "teacher_negatives": "negatives"},
    collator="teacher",
)
