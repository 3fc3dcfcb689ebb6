"""Attention masks through transformers' mask interface, with no deprecated call.

The suite's warning filters (pyproject ``filterwarnings``) turn a DeprecationWarning or FutureWarning
attributed to a ``vlmbed`` module into an error, while third-party internal deprecations stay warnings.
These tests check the masks themselves and that those filters are in force: the deprecated call
``attention.py`` used to make (``create_causal_mask(..., past_key_values=None)``), run from a module named
like vlmbed's, fails the test; the same call from elsewhere only warns.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import Qwen2Config

from vlmbed.models.attention import build_attention_masks

PADDING = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])  # (B, T): row 0 right-padded


def _config(impl: str) -> Qwen2Config:
    cfg = Qwen2Config(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=32)
    cfg._attn_implementation = impl
    return cfg


def _allowed(mask: torch.Tensor) -> torch.Tensor:
    """(B, T, T) bool of a materialised mask: bool (sdpa) or additive float (eager)."""
    return (mask if mask.dtype == torch.bool else mask == 0)[:, 0]


def _expected(rule) -> torch.Tensor:
    t = PADDING.shape[1]
    qi, ki = torch.arange(t).view(t, 1), torch.arange(t).view(1, t)
    return rule(qi, ki).unsqueeze(0) & PADDING.bool().unsqueeze(1)  # (B, T, T): rule and key is not padding


def _same_pair(qi, ki):
    return qi // 2 == ki // 2


RULES = {
    "causal": lambda qi, ki: ki <= qi,
    "bidirectional": lambda qi, ki: torch.ones_like(qi * ki, dtype=torch.bool),
    "block": _same_pair,
}


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("mode", list(RULES))
def test_masks_follow_the_mode_and_padding_without_any_deprecation(impl, mode):
    block_fn = (lambda b, h, q, k: _same_pair(q, k)) if mode == "block" else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        masks = build_attention_masks(mode, _config(impl), PADDING, torch.float32, block_fn=block_fn)
    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning | FutureWarning)]
    assert not deprecations, [str(w.message) for w in deprecations]
    assert masks["full_attention"] is masks["sliding_attention"]
    got = _allowed(masks["full_attention"])
    # padded query rows may be anything (their outputs are never pooled); real query rows must match
    real = PADDING.bool()
    assert torch.equal(got[real], _expected(RULES[mode])[real]), (impl, mode)


_PROBE = '''
import torch
from transformers.masking_utils import create_causal_mask

def probe(config):
    shape_only = torch.empty((1, 3, 0))
    return create_causal_mask(config=config, inputs_embeds=shape_only, attention_mask=torch.ones(1, 3, dtype=torch.long),
                              past_key_values=None)

def plain_deprecation():
    import warnings
    warnings.warn("old API", DeprecationWarning, stacklevel=1)
'''


def _probe_module(name: str) -> dict:
    """The probe's functions, defined in a module called ``name`` (warnings are attributed by ``__name__``)."""
    namespace = {"__name__": name}
    exec(compile(_PROBE, f"<{name}>", "exec"), namespace)  # noqa: S102 (fixed source above)
    return namespace


def test_a_deprecated_transformers_call_from_vlmbed_fails_the_suite():
    probe = _probe_module("vlmbed.models._deprecated_probe")
    with pytest.raises(FutureWarning, match="past_key_values"):
        probe["probe"](_config("sdpa"))
    with pytest.raises(DeprecationWarning, match="old API"):
        probe["plain_deprecation"]()


def test_the_same_call_from_a_third_party_module_only_warns():
    probe = _probe_module("somelib.internal")
    with warnings.catch_warnings(record=True) as caught:  # keeps the suite's filters, records what they show
        probe["probe"](_config("sdpa"))
        probe["plain_deprecation"]()
    shown = [(w.category, str(w.message)) for w in caught]
    assert any(c is FutureWarning and "past_key_values" in m for c, m in shown), shown
    assert not any(c is DeprecationWarning for c, _ in shown), shown  # ignored, as before


def test_vlmbed_filter_does_not_match_look_alike_module_names():
    probe = _probe_module("vlmbed_plugins.x")
    with warnings.catch_warnings(record=True):
        probe["probe"](_config("sdpa"))  # a FutureWarning, not an error
