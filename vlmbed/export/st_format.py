"""sentence-transformers files: ``SentenceTransformer(OUT)`` gives vlmbed's vectors.

Modules: the Transformer (the model's ``message`` modality: every input, text, image or both, becomes a
chat rendered by the embedding template), Pooling (``lasttoken`` or ``mean``, written in the legacy
``pooling_mode_*`` keys that vLLM's reader also parses) and, when the model normalises, Normalize. The
module types are the ``sentence_transformers.models.*`` names that every sentence-transformers and vLLM
version resolves. ``prompts`` hold the instruction of each role: ``encode_query`` / ``encode_document``
send it as the system message, which the template puts where vlmbed puts ``{instruction}``.
"""

from __future__ import annotations

from pathlib import Path

from vlmbed.export.core import ExportPlan, write_json

TRANSFORMER = "sentence_transformers.models.Transformer"
POOLING = "sentence_transformers.models.Pooling"
NORMALIZE = "sentence_transformers.models.Normalize"
LEGACY_POOLING_KEYS = {
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "max": "pooling_mode_max_tokens",
    "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
    "weightedmean": "pooling_mode_weightedmean_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}


def modules(plan: ExportPlan) -> list[dict]:
    """modules.json: transformer (folder root), pooling, normalize when the model normalises."""
    rows = [{"idx": 0, "name": "0", "path": "", "type": TRANSFORMER},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": POOLING}]
    if plan.normalize:
        rows.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": NORMALIZE})
    return rows


def pooling_config(plan: ExportPlan) -> dict:
    """1_Pooling/config.json in the legacy key format: exactly one key is true, the mode's flag (older vLLM
    versions take the first true key as the pooling type; ``include_prompt`` keeps its default)."""
    flags = {key: mode == plan.pooling for mode, key in LEGACY_POOLING_KEYS.items()}
    return {"word_embedding_dimension": plan.dimension, **flags}


def transformer_config(plan: ExportPlan) -> dict:
    """sentence_bert_config.json: text, image and text+image inputs all become messages (the ``message``
    modality), through the model's forward; no unpadding
    (Qwen-VL cannot take packed inputs), no generation prompt (the template writes its own suffix)."""
    config = {
        "transformer_task": "feature-extraction",
        "modality_config": {
            "text": {"method": "forward", "method_output_name": "last_hidden_state"},
            "image": {"method": "forward", "method_output_name": "last_hidden_state"},
            "message": {"method": "forward", "method_output_name": "last_hidden_state", "format": "structured"},
        },
        "module_output_name": "token_embeddings",
        "processing_kwargs": {"chat_template": {"add_generation_prompt": False}},
        "unpad_inputs": False,
    }
    if plan.max_length:
        config["max_seq_length"] = plan.max_length
    return config


def st_config(plan: ExportPlan) -> dict:
    """config_sentence_transformers.json: model type, prompts per role, similarity."""
    from vlmbed import __version__

    return {
        "model_type": "SentenceTransformer",
        "__version__": {"vlmbed": __version__},
        "prompts": dict(plan.prompts),
        "default_prompt_name": None,
        "similarity_fn_name": "cosine" if plan.normalize else "dot",
    }


def write(out: Path, plan: ExportPlan) -> list[Path]:
    """Write the sentence-transformers files into the exported folder ``out``; returns them."""
    files = {
        out / "modules.json": modules(plan),
        out / "sentence_bert_config.json": transformer_config(plan),
        out / "config_sentence_transformers.json": st_config(plan),
        out / "1_Pooling" / "config.json": pooling_config(plan),
    }
    for path, payload in files.items():
        write_json(path, payload)
    if plan.normalize:
        (out / "2_Normalize").mkdir(exist_ok=True)
    return list(files)
