"""vlmbed's own tokens on any tokenizer.

Recipes need a few tokens that released checkpoints do not have: ``<|mask|>`` (the MLM mask of MoCa /
CoCoA pre-training) and ``<|emb|>`` (a marked embedding position, MuCo turns). Each is a *role*
(``mask``, ``mark``) with a default token from the family adapter; ``model.tokens`` maps a role onto
another token (for example one the vocabulary already has).

When a role's default token is missing, :func:`add_tokens` adds it as a special token, grows the
embedding matrix only if the id falls past its rows (Qwen checkpoints keep unused rows at the tail),
and sets the new rows, input and (untied) output embeddings alike, to the mean of the real tokens'
rows (not random noise, not a stale unused row). The tokenizer is saved with the model, and the added
tokens are listed in ``vlmbed.json``, so encode, serve, eval and export see the same ids; an adapter
folder re-adds them to its base model deterministically (same order, same ids, same mean rows).
Under LoRA the added rows stay trainable through peft's ``trainable_token_indices``.
"""

from __future__ import annotations

import torch

TOKEN_ROLES = ("mask", "mark", "eos")  # eos: the appended token that last-token pooling reads (CoCoA's bridge)


class MissingTokenError(ValueError):
    """A role's token is not in the vocabulary and may not be added."""


def role_tokens(adapter, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """Role -> token string: the family adapter's defaults with ``model.tokens`` on top."""
    unknown = set(overrides or {}) - set(TOKEN_ROLES)
    if unknown:
        raise ValueError(f"model.tokens: unknown role(s) {sorted(unknown)}; roles are {', '.join(TOKEN_ROLES)}")
    return {"mask": adapter.mask_token, "mark": adapter.mark_token, "eos": adapter.eos_token, **(overrides or {})}


def token_id(tokenizer, token: str) -> int | None:
    """The id of ``token`` as one piece of the vocabulary, or None (never the unknown token's id)."""
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or isinstance(tid, list):
        return None
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and tid == unk and token != tokenizer.unk_token:
        return None
    return int(tid)


def require_id(tokenizer, token: str, role: str) -> int:
    """The id of a role's token; a clear error (never a None reaching a tensor op) when it is missing."""
    tid = token_id(tokenizer, token)
    if tid is None:
        raise MissingTokenError(
            f"the {role} token {token!r} is not in this model's vocabulary. vlmbed adds its default tokens when "
            f"a stage needs them; to use a token the vocabulary already has, set model.tokens.{role}=<token>; "
            "for a model saved without it, train the stage that adds it or point at vlmbed's saved model folder."
        )
    return tid


def add_tokens(model: torch.nn.Module, tokenizer, tokens: list[str]) -> list[int]:
    """Add the missing ``tokens`` as special tokens and give them mean-initialised embedding rows.

    Returns the ids of the tokens added (empty when all were present).
    """
    missing = [t for t in dict.fromkeys(tokens) if token_id(tokenizer, t) is None]
    if not missing:
        return []
    real = len(tokenizer)  # rows [0, real) belong to real tokens; later rows are unused padding
    tokenizer.add_tokens(missing, special_tokens=True)
    ids = [require_id(tokenizer, t, "added") for t in missing]
    rows = model.get_input_embeddings().weight.shape[0]
    if max(ids) >= rows:
        model.resize_token_embeddings(max(ids) + 1, mean_resizing=False)
    _mean_rows(model.get_input_embeddings().weight, ids, real)
    out = model.get_output_embeddings()
    if out is not None and out.weight is not model.get_input_embeddings().weight:
        _mean_rows(out.weight, ids, real)
    return ids


@torch.no_grad()
def _mean_rows(weight: torch.Tensor, ids: list[int], real: int) -> None:
    """Set rows ``ids`` of ``weight`` (V, d) to the mean of the first ``real`` rows."""
    mean = weight[:real].float().mean(dim=0)  # (d,)
    weight[torch.tensor(ids, device=weight.device)] = mean.to(weight.dtype)
