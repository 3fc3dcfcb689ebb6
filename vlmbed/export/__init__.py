"""Export a vlmbed model for the tools that load and serve embedding models: sentence-transformers, vLLM.

``export(model, out, format)`` writes a merged, plain Hugging Face folder whose chat template renders items
exactly as vlmbed does, plus the files the consumer reads (``FORMATS``). What a consumer cannot reproduce
(pooling at a mark that is not the last token, a bidirectional family vLLM runs causally, a chat format a
template cannot express) is refused with a message naming the fix, never exported wrongly.
"""

from __future__ import annotations

from pathlib import Path

from vlmbed.export import core, st_format, vllm_format

# format name -> (writer of the consumer's files, check run before anything is written)
FORMATS = {
    "sentence-transformers": (st_format.write, lambda plan: None),
    "vllm": (vllm_format.write, vllm_format.check),
}


def export(
    model: str | Path,
    out: str | Path,
    format: str,  # noqa: A002 - the CLI's --format
    dtype: str = "auto",
    matryoshka_dims: list[int] | None = None,
    prompts: dict[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Export ``model`` (a vlmbed or Hugging Face model folder, or a LoRA adapter folder, merged first) to
    ``out`` in ``format`` (sentence-transformers | vllm).

    ``dtype``: weights saved as float32 | bfloat16 | float16, ``auto`` = the model's config dtype (adapters
    are merged in float32 first). ``matryoshka_dims``: the dimensions the model was trained to truncate to.
    ``prompts``: role (query, document) -> the instruction given to items that have none."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if dtype != "auto" and dtype not in core.DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose auto, {', '.join(core.DTYPES)}")
    out = Path(out)
    core.check_out(out, overwrite)
    write, check = FORMATS[format]
    embedder = core.load_for_export(model)
    plan = core.make_plan(embedder, matryoshka_dims, prompts)
    check(plan)
    core.write_model(embedder, out, plan, core.source_dtype(model) if dtype == "auto" else dtype, core.probe_image())
    write(out, plan)
    return out


__all__ = ["FORMATS", "export"]
