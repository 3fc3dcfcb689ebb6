"""vLLM files: the pooling configuration vLLM reads, and a SERVE.md with the command and a request.

vLLM (``vllm serve OUT --runner pooling``) reads, checked against vLLM 0.33's source:

- ``modules.json`` + ``1_Pooling/config.json``: ``vllm.transformers_utils.config.get_pooling_config`` takes the
  first module whose type is a sentence-transformers Pooling, and parses every ``pooling_mode_*: true`` key
  with ``parse_pooling_type`` (``pooling_mode_lasttoken`` -> LAST, ``pooling_mode_mean_tokens`` -> MEAN);
  a Normalize module sets ``use_activation`` (L2 normalisation). The sentence-transformers files are written
  as for that format, so the folder also loads in sentence-transformers.
- ``config.json``: ``is_causal: false`` in the text config makes the Qwen2 / Qwen3 decoder layers (the
  language model of Qwen2-VL, Qwen2.5-VL and Qwen3-VL) use ENCODER_ONLY attention; at the top level it makes
  ``ModelConfig.attn_type`` encoder-only (no chunked prefill across a bidirectional sequence).
  ``matryoshka_dimensions`` is what ``ModelConfig.is_matryoshka`` reads (then requests may ask ``dimensions``).
- ``chat_template.jinja``: the embedding template; it loops over ``message['content']``, so vLLM detects the
  ``openai`` content format and leaves the image placeholders to the template, as vlmbed places them.
- the processor's pixel bounds (``preprocessor_config.json``), which vLLM's Qwen-VL processing uses.
"""

from __future__ import annotations

import json
from pathlib import Path

from vlmbed.export import st_format
from vlmbed.export.core import ExportPlan

# families whose vLLM implementation runs the language model bidirectionally when the text config says
# is_causal: false (vLLM 0.33: Qwen2DecoderLayer / Qwen3DecoderLayer read it)
VLLM_BIDIRECTIONAL = {"qwen2_vl": "Qwen2-VL", "qwen2_5_vl": "Qwen2.5-VL", "qwen3_vl": "Qwen3-VL"}


def check(plan: ExportPlan) -> None:
    """Refuse what vLLM would run differently from vlmbed."""
    if not plan.causal and plan.family not in VLLM_BIDIRECTIONAL:
        raise ValueError(
            f"cannot export a bidirectional {plan.family!r} model for vLLM: vLLM's implementation of this family "
            "ignores is_causal and would run it causally, giving other vectors. vLLM runs "
            f"{', '.join(VLLM_BIDIRECTIONAL.values())} bidirectionally; export this model with --format "
            "sentence-transformers, or train it with attention causal."
        )


def write(out: Path, plan: ExportPlan) -> list[Path]:
    """Write the pooling files and SERVE.md into the exported folder ``out``; returns them."""
    check(plan)
    files = st_format.write(out, plan)
    (out / "SERVE.md").write_text(serve_md(out, plan))
    return [*files, out / "SERVE.md"]


def serve_command(out: Path, plan: ExportPlan, name: str = "vlmbed") -> str:
    args = ["vllm serve", str(out), "--runner pooling", "--convert embed", f"--served-model-name {name}",
            "--limit-mm-per-prompt '{\"image\": 1, \"video\": 0}'"]
    if plan.max_length:
        args.append(f"--max-model-len {plan.max_length}")
    return " \\\n    ".join(args)


def example_request(plan: ExportPlan, name: str = "vlmbed") -> dict:
    """One /v1/embeddings request: an instruction (system), an image and a text (user), the role as task."""
    body = {
        "model": name,
        "messages": [
            {"role": "system", "content": plan.prompts.get("query") or "Find the caption of this image: "},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "https://upload.wikimedia.org/wikipedia/commons/4/47/"
                                                           "PNG_transparency_demonstration_1.png"}},
                {"type": "text", "text": "two dice"},
            ]},
        ],
        "chat_template_kwargs": {"task": "query"},
        "encoding_format": "float",
    }
    if plan.matryoshka_dims:
        body["dimensions"] = plan.matryoshka_dims[-1]
    return body


def serve_md(out: Path, plan: ExportPlan) -> str:
    attention = "causal" if plan.causal else "bidirectional (`is_causal: false` in config.json)"
    dims = (f"- Matryoshka dimensions: {plan.matryoshka_dims}; ask for fewer with `\"dimensions\": D`.\n"
            if plan.matryoshka_dims else "- Matryoshka: not trained with it (`dimensions` is refused).\n")
    return f"""# Serving this model with vLLM

Exported by `vlmbed export --format vllm`. Start the server:

```bash
{serve_command(out, plan)}
```

Then ask for embeddings with **chat messages** (`messages`, not `input`): the folder's chat template renders
them exactly as vlmbed encodes an item, its EOS token included. A plain `input` string skips the template and
gives other vectors.

- system message: the item's instruction (leave it out for none);
- user message: the item's text and at most one image (`image_url`, a URL or a `data:image/...;base64,` URL);
- `chat_template_kwargs.task`: `"query"` (default) or `"document"`, the role vlmbed encodes the item for.

```bash
curl -s http://localhost:8000/v1/embeddings -H 'Content-Type: application/json' -d '{json.dumps(example_request(plan))}'
```

What vLLM reads from this folder:

- pooling: `{plan.pooling}` (`1_Pooling/config.json`), {'L2-normalised' if plan.normalize else 'not normalised'}
  (`modules.json`), dimension {plan.dimension};
- attention: {attention};
{dims}- image resolution bounds: `preprocessor_config.json` (`min_pixels` / `max_pixels`).

The same folder loads in sentence-transformers: `SentenceTransformer("{out}")`, then
`encode_query` / `encode_document` with strings, PIL images or `{{"text": ..., "image": ...}}` dicts.
"""
