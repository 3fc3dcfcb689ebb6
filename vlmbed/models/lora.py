"""LoRA adapters (peft), injected in place: the Embedder keeps holding a plain transformers model.

``peft.get_peft_model`` would wrap the backbone in a ``PeftModel`` and move every module one level
down, which breaks the family adapters' module paths; ``inject_adapter_in_model`` swaps the target
``nn.Linear`` layers for LoRA layers and leaves the model's structure alone.

Targets are explicit module names found through the family adapter: every attention and MLP
projection of the language model, and optionally of the vision tower (``target:
language_and_vision``). Export:

* **merged**: ``W + scaling * B @ A`` folded into each base weight, saved as a plain Hugging Face
  folder (loads with transformers alone; what vLLM serves). Computed from a state dict, so it also
  works on a state dict gathered from FSDP or ZeRO-3 shards.
* **adapter**: PEFT's on-disk format (``adapter_config.json`` + ``adapter_model.safetensors``, keys
  ``base_model.model.<module>.lora_A.weight``) plus vlmbed's settings and the processor; the base
  model folder is recorded in ``base_model_name_or_path``. ``Embedder.from_pretrained`` loads it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

LANGUAGE_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VISION_MODULES = ["qkv", "proj", "fc1", "fc2", "gate_proj", "up_proj", "down_proj"]
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
ADAPTER_NAME = "default"
TOKEN_ROWS = "trainable_tokens_delta"  # peft's name for trained embedding rows (full row values)
TOKEN_BASE = ".token_adapter.base_layer.weight"  # the wrapped embedding's own weight


def _prefix_of(model: nn.Module, sub: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is sub:
            return name
    raise ValueError("the family adapter's module is not part of the model")


def lora_targets(embedder, target: str = "language", modules: list[str] | None = None) -> list[str]:
    """Full names of the linear layers that get adapters."""
    model, adapter = embedder.model, embedder.adapter
    scopes = [(_prefix_of(model, adapter.language_model(model)), modules or LANGUAGE_MODULES)]
    if target == "language_and_vision":
        scopes.append((_prefix_of(model, adapter.vision_tower(model)), modules or VISION_MODULES))
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        leaf = name.rsplit(".", 1)[-1]
        if any(name.startswith(prefix + ".") and leaf in leaves for prefix, leaves in scopes):
            out.append(name)
    if not out:
        raise ValueError(f"no linear layer named {modules or LANGUAGE_MODULES} under the {target} scope; "
                         "set model.lora.modules to the leaf names of the layers to adapt")
    return out


def apply_lora(embedder, settings, base_path: str | Path | None = None, trainable_tokens: list[int] = ()):
    """Inject LoRA layers per ``settings`` (config.LoraSettings); only adapter weights stay trainable, plus
    the embedding rows of ``trainable_tokens`` (tokens vlmbed added: peft's ``trainable_token_indices``)."""
    from peft import LoraConfig

    config = LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=lora_targets(embedder, settings.target, settings.modules), bias="none",
        trainable_token_indices=sorted(trainable_tokens) or None,
    )
    _inject(embedder, config, base_path)
    return config


def _inject(embedder, config, base_path) -> None:
    from peft import inject_adapter_in_model

    model = embedder.model
    for p in model.parameters():
        p.requires_grad_(False)
    inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    for name, p in model.named_parameters():
        p.requires_grad_(is_adapter_key(name))
    config.base_model_name_or_path = str(Path(base_path).resolve()) if base_path else None
    model.vlmbed_lora_config = config


def is_adapter_key(name: str) -> bool:
    """A parameter the adapter owns: LoRA matrices or trainable token rows."""
    return "lora_" in name or TOKEN_ROWS in name


def has_lora(model: nn.Module) -> bool:
    return getattr(model, "vlmbed_lora_config", None) is not None


def lora_scalings(model: nn.Module) -> dict[str, float]:
    """Scaling (alpha / r) of every LoRA layer, by module name."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            if getattr(module, "use_dora", {}).get(ADAPTER_NAME, False):
                raise ValueError("merging DoRA adapters from a state dict is not supported")
            out[name] = float(module.scaling[ADAPTER_NAME])
    return out


def merged_state_dict(model: nn.Module, state_dict: dict | None = None) -> dict[str, torch.Tensor]:
    """The base model's state dict with every adapter folded in: ``W + scaling * B @ A``."""
    sd = state_dict if state_dict is not None else model.state_dict()
    scalings = lora_scalings(model)
    out = {k: v for k, v in sd.items() if not is_adapter_key(k) and ".base_layer." not in k}
    for name, index in token_rows(model).items():  # embedding rows of added tokens: written in place
        weight = sd[name + TOKEN_BASE].clone()  # (V, d)
        rows = sd[f"{name}.token_adapter.{TOKEN_ROWS}.{ADAPTER_NAME}"]  # (n, d)
        out[f"{name}.weight"] = weight.index_copy(0, index.to(weight.device), rows.to(weight))
    for name, scale in scalings.items():
        base = sd[f"{name}.base_layer.weight"]
        a = sd[f"{name}.lora_A.{ADAPTER_NAME}.weight"].float()  # (r, in)
        b = sd[f"{name}.lora_B.{ADAPTER_NAME}.weight"].float()  # (out, r)
        out[f"{name}.weight"] = (base.float() + scale * (b @ a)).to(base.dtype)  # (out, in)
        if f"{name}.base_layer.bias" in sd:
            out[f"{name}.bias"] = sd[f"{name}.base_layer.bias"]
    return out


def token_rows(model: nn.Module) -> dict[str, torch.Tensor]:
    """Module name -> token indices (n,) of every embedding whose added-token rows are trained."""
    from peft.utils.other import TrainableTokensWrapper

    return {name: torch.tensor(module.token_adapter.token_indices[ADAPTER_NAME], dtype=torch.long)
            for name, module in model.named_modules() if isinstance(module, TrainableTokensWrapper)}


def _peft_key(key: str) -> str:
    """Live state-dict key -> PEFT's saved key (no adapter name; token rows under the wrapped module)."""
    key = key.replace(f".{ADAPTER_NAME}.", ".")
    if key.endswith(f".{TOKEN_ROWS}.{ADAPTER_NAME}"):
        key = key[: -len(ADAPTER_NAME) - 1]
    return PEFT_PREFIX + key


def adapter_state_dict(model: nn.Module, state_dict: dict | None = None) -> dict[str, torch.Tensor]:
    """Adapter weights under PEFT's saved key names."""
    sd = state_dict if state_dict is not None else model.state_dict()
    # clone: tied embeddings share one trainable-token delta between input and output rows (safetensors
    # refuses tensors that share memory)
    return {_peft_key(k): v.detach().cpu().clone() for k, v in sd.items() if is_adapter_key(k)}


def save_adapter(model: nn.Module, path: str | Path, state_dict: dict | None = None) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = model.vlmbed_lora_config
    save_file(adapter_state_dict(model, state_dict), str(path / ADAPTER_WEIGHTS))
    config.save_pretrained(str(path))
    return path


def is_adapter_folder(path: str | Path) -> bool:
    path = Path(path)
    return (path / ADAPTER_CONFIG).exists() and not (path / "config.json").exists()


def adapter_base(path: str | Path) -> Path:
    """The base model folder an adapter folder was trained on."""
    cfg = json.loads((Path(path) / ADAPTER_CONFIG).read_text())
    base = cfg.get("base_model_name_or_path")
    if not base or not (Path(base) / "config.json").exists():
        raise FileNotFoundError(
            f"{path}: the adapter's base model {base!r} is not a model folder. Edit base_model_name_or_path in "
            f"{Path(path) / ADAPTER_CONFIG} to point at the base model, or export merged weights instead."
        )
    return Path(base)


def load_adapter(embedder, path: str | Path) -> None:
    """Inject and load the adapter saved in ``path`` into a freshly loaded base embedder."""
    from peft import LoraConfig
    from safetensors.torch import load_file

    path = Path(path)
    config = LoraConfig.from_pretrained(str(path))
    _inject(embedder, config, config.base_model_name_or_path)
    saved = load_file(str(path / ADAPTER_WEIGHTS))
    own = {k: v for k, v in embedder.model.state_dict().items() if is_adapter_key(k)}
    remap = {_peft_key(k): k for k in own}
    missing = sorted(set(remap) - set(saved))
    unexpected = sorted(set(saved) - set(remap))
    if missing or unexpected:
        raise ValueError(f"{path}: adapter does not match the base model (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}); was it trained on another architecture?")
    embedder.model.load_state_dict({remap[k]: v for k, v in saved.items()}, strict=False)

