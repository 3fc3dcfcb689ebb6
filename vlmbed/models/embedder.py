"""Embedder: a Hugging Face VLM + attention mode + pooling, by composition.

The backbone is a stock transformers model; vlmbed never subclasses or forks it. The attention
mode is an argument of :meth:`Embedder.forward` (recipes switch it between stages), built as masks
through transformers' mask interface. vlmbed's own settings (pooling, attention, templates, ...)
are saved next to the weights in ``vlmbed.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers.utils import ModelOutput

from vlmbed.models.adapters import BACKBONES, adapter_for, preset_settings
from vlmbed.models.attention import ATTENTION_MODES, build_attention_masks, uses_flash_attention
from vlmbed.models.blocks import SEGMENT_KEYS, block_mask_fn
from vlmbed.models.cpu_memory import keep_freed_memory
from vlmbed.models.encode_plan import plan_encode, prefetch_pays, prefetched
from vlmbed.models.heads import PatchDecoder, mlm_logits
from vlmbed.models.inputs import DEFAULT_TEMPLATES, ROW_POSITIONS, ItemEncoder
from vlmbed.models.packing import Packing, packed_inputs, plan_packing
from vlmbed.models.pooling import POOLING, at_positions, last_marked, marked_positions
from vlmbed.models.tokens import add_tokens, require_id, role_tokens, token_id
from vlmbed.types import Item

SETTINGS_FILE = "vlmbed.json"
CHAT_KEYS = {"system", "user", "generation_prompt", "suffix", "default_instruction", "punctuate"}


@dataclass
class EmbedderSettings:
    """vlmbed's own settings, saved beside the weights."""

    attention: str = "causal"  # causal | bidirectional | block (per-sample blocks from the batch)
    block_causal: bool = False  # block attention intersected with causal order
    pooling: str = "last"  # last | mean | marked
    normalize: bool = True
    append_eos: bool = True  # append the family's EOS token (what last-token pooling reads)
    templates: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TEMPLATES))
    max_text_tokens: int | None = 512
    tokens: dict[str, str] | None = None  # role (mask, mark) -> token, over the family adapter's defaults
    added_tokens: list[str] = field(default_factory=list)  # tokens vlmbed added to the vocabulary, in order
    min_pixels: int | None = None  # image resolution bounds set on the processor (None: the processor's own)
    max_pixels: int | None = None
    max_length: int | None = None  # tokens per sequence, image tokens counted (the item's text is cut to fit)
    chat: dict[str, dict] | None = None  # role -> chat format rendered by the processor's chat template
    preset: str | None = None  # the released format these settings came from (adapters.PRESETS), if any
    packing: str = "auto"  # auto: pack rows of mixed-length batches into fewer sequences (models.packing) | off

    def __post_init__(self) -> None:
        if self.pooling not in (*POOLING, "marked"):
            raise ValueError(f"unknown pooling {self.pooling!r}; choose one of {', '.join(POOLING)}, marked")
        if self.packing not in ("auto", "off"):
            raise ValueError(f"unknown packing {self.packing!r}; choose auto or off")
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"unknown attention {self.attention!r}; choose one of {', '.join(ATTENTION_MODES)}")
        for role, spec in (self.chat or {}).items():
            unknown = set(spec or {}) - CHAT_KEYS
            if unknown:
                raise ValueError(f"model.chat.{role}: unknown key(s) {sorted(unknown)}; known: {sorted(CHAT_KEYS)}")


@dataclass
class EmbedOutput(ModelOutput):
    """What one forward returns; objectives take what they need.

    A ``ModelOutput`` so that engines (DeepSpeed, accelerate's fp32 output conversion) see the tensors.
    """

    embeddings: torch.Tensor | None = None  # (B, d), or (B, k, d) at marked positions
    hidden: torch.Tensor | None = None  # (B, T, d) post-norm last hidden states
    attention_mask: torch.Tensor | None = None  # (B, T) padding mask
    masks: dict | None = None  # the per-layer attention masks of the batch (a packed forward ran packed ones)
    position_ids: torch.Tensor | None = None  # (3, B, T) M-RoPE positions used
    token_logits: torch.Tensor | None = None  # (M, V) LM-head logits at the asked positions
    patch_predictions: torch.Tensor | None = None  # (U_masked, merge**2 * patch_dim) from the patch decoder


def _saved_settings(path: Path, overrides: dict) -> dict:
    """The folder's ``vlmbed.json`` settings (if any), then a ``preset``'s settings, then the other non-None
    ``overrides`` on top."""
    settings = json.loads((path / SETTINGS_FILE).read_text()) if (path / SETTINGS_FILE).exists() else {}
    if overrides.get("preset") is not None:
        settings.update(preset_settings(overrides["preset"]))
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return settings


class Embedder(nn.Module):
    """A VLM turned into an embedding model. ``encode(items, role=...)`` is the public entry point."""

    def __init__(self, model: nn.Module, processor, settings: EmbedderSettings | None = None):
        super().__init__()
        self.model = model
        self.processor = processor
        self.settings = settings or EmbedderSettings()
        self.adapter = adapter_for(model.config.model_type)  # a clear error for an unsupported family
        self.heads = nn.ModuleDict()  # training-only heads (not saved with the model)
        self.tokens = role_tokens(self.adapter, self.settings.tokens)  # role -> token string
        # an adapter folder's base model gets the tokens vlmbed added during training (same ids, same rows)
        add_tokens(model, processor.tokenizer, list(self.settings.added_tokens))
        self.adapter.set_pixel_bounds(processor, self.settings.min_pixels, self.settings.max_pixels)
        self.adapter.configure_model(model, processor)
        self.encoder = ItemEncoder(
            processor=processor,
            image_placeholder=self.adapter.image_placeholder,
            templates=self.settings.templates,
            append_eos=self.tokens["eos"] if self.settings.append_eos else None,
            max_text_tokens=self.settings.max_text_tokens,
            chat=self.settings.chat,
            max_length=self.settings.max_length,
            image_tokens=lambda width, height: self.adapter.image_tokens(processor, width, height),
            chat_parts=self.adapter.chat_parts,
        )
        if next(model.parameters()).device.type == "cpu":
            keep_freed_memory()  # activations reuse freed memory instead of page-faulting it back in every step

    # ----------------------------------------------------------------- vlmbed's own tokens
    @property
    def mark_token_id(self) -> int | None:
        """Id of the ``<|emb|>`` (mark role) token, or None when the vocabulary has none."""
        return token_id(self.processor.tokenizer, self.tokens["mark"])

    def token_id(self, role: str) -> int:
        """Id of a role's token (``mask``, ``mark``); a clear error when the vocabulary lacks it."""
        return require_id(self.processor.tokenizer, self.tokens[role], role)

    def ensure_tokens(self, roles) -> list[int]:
        """Make every role's token part of the vocabulary, adding the default ones that are missing
        (new embedding rows = mean of the real rows). A token mapped by ``model.tokens`` must exist.
        Returns the ids added now (LoRA keeps them trainable)."""
        tok = self.processor.tokenizer
        wanted = [self.tokens[r] for r in dict.fromkeys(roles)]
        for role in dict.fromkeys(roles):
            if (self.settings.tokens or {}).get(role) is not None:
                require_id(tok, self.tokens[role], role)  # a user's mapping never silently grows the vocabulary
        added = add_tokens(self.model, tok, wanted)
        self.settings.added_tokens += [t for t in wanted if token_id(tok, t) in added]
        return added

    # ----------------------------------------------------------------- loading and saving
    @classmethod
    def from_pretrained(cls, path: str | Path, dtype=None, attn_implementation: str | None = None, **overrides):
        """Load a model folder (a vlmbed save, any supported Hugging Face VLM folder, or a LoRA adapter folder)."""
        from vlmbed.models import lora

        path = Path(path)
        settings = _saved_settings(path, overrides)
        if lora.is_adapter_folder(path):
            embedder = cls.from_pretrained(lora.adapter_base(path), dtype=dtype,
                                           attn_implementation=attn_implementation, **settings)
            lora.load_adapter(embedder, path)
            return embedder
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"{path} is not a model folder (no config.json). Point to a Hugging Face model folder, "
                "or build the tiny one with `vlmbed quickstart` / vlmbed.models.tiny.build_tiny_vlm."
            )
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
        if model_type not in BACKBONES:
            raise ValueError(f"{path}: unsupported model type {model_type!r}; supported: {', '.join(BACKBONES)}")
        adapter = BACKBONES[model_type]()
        model = adapter.load_model(path, dtype=dtype, attn_implementation=attn_implementation)
        processor = adapter.load_processor(path)
        return cls(model, processor, EmbedderSettings(**settings))

    def compile(self, **kwargs) -> Embedder:
        """Compile every decoder layer of the language model with ``torch.compile`` (regional compilation:
        layers of one class share the compiled code; ``dynamic=True`` by default, so batches of any length
        reuse it). The first call of a new shape pays the compilation (tens of seconds on CPU); vectors equal
        the eager ones within float tolerance. Returns self."""
        kwargs.setdefault("dynamic", True)
        for layer in self.adapter.decoder_layers(self.model):
            layer.compile(**kwargs)
        return self

    def save_pretrained(self, path: str | Path, state_dict: dict | None = None, merge_lora: bool = True) -> Path:
        """Save weights, processor and settings. With LoRA adapters: merged weights as a plain Hugging Face
        folder (``merge_lora=True``), or the adapter alone in PEFT's format. ``state_dict``: weights to save
        instead of the live ones (a state dict gathered from FSDP / ZeRO-3 shards)."""
        from vlmbed.models import lora

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if lora.has_lora(self.model) and not merge_lora:
            lora.save_adapter(self.model, path, state_dict)
        elif lora.has_lora(self.model):
            self.model.save_pretrained(path, state_dict=lora.merged_state_dict(self.model, state_dict))
        elif state_dict is not None:
            self.model.save_pretrained(path, state_dict=state_dict)
        else:
            self.model.save_pretrained(path)
        self.processor.save_pretrained(path)
        (path / SETTINGS_FILE).write_text(json.dumps(asdict(self.settings), indent=2))
        return path

    # ----------------------------------------------------------------- forward
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def tokenize(self, items: list[Item], role: str) -> dict[str, torch.Tensor]:
        return self.encoder(items, role)

    def forward(
        self,
        inputs: dict[str, torch.Tensor],
        attention: str | None = None,
        pooling: str | None = None,
        positions: torch.Tensor | str | None = None,
        block_fn=None,
        token_positions: tuple[torch.Tensor, torch.Tensor] | None = None,
        masked_units: tuple[torch.Tensor, torch.Tensor] | None = None,
        normalize: bool | None = None,
    ) -> EmbedOutput:
        """Embed processor inputs.

        ``attention``: causal | bidirectional | block; defaults to the settings. ``block`` reads the
        per-sample blocks from the inputs (``segment_ids`` (B, T), ``segment_visibility`` (B, S, S); see
        :mod:`vlmbed.models.blocks`), or takes ``block_fn`` (batch, head, q, kv) -> bool; a batch with
        neither is one segment. ``pooling``: last | mean | marked (the last ``<|emb|>`` token of each
        row); ignored when ``positions`` is given. ``positions``: (B, k) token indices (-1 = none) or
        ``"marked"`` for every ``<|emb|>`` token, giving (B, k, d). ``normalize``: L2-normalise the
        embeddings (default: the settings). Reconstruction heads, run inside the same forward (so
        DDP/FSDP see them): ``token_positions`` (rows, cols) -> ``token_logits`` from the LM head;
        ``masked_units`` (image-token mask (B, T), unit mask (U,)) -> ``patch_predictions`` from the
        patch decoder (:meth:`add_patch_decoder`).
        """
        inputs = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in inputs.items()}
        segments = [inputs.pop(k, None) for k in SEGMENT_KEYS]
        offsets = inputs.pop("position_offsets", None)  # (B, T): per-turn positions restart (MuCo turns)
        mask = inputs["attention_mask"]  # (B, T)
        mode = attention or self.settings.attention
        text_config = self.adapter.text_config(self.model)
        if mode == "block" and block_fn is None and segments[0] is not None:
            if segments[1] is None:
                raise ValueError("block attention: the batch has segment_ids but no segment_visibility")
            block_fn = block_mask_fn(segments[0], segments[1], causal=self.settings.block_causal)
        elif mode == "block" and block_fn is None:  # no blocks in this batch: one segment per row
            mode = "causal" if self.settings.block_causal else "bidirectional"
        if uses_flash_attention(text_config):
            if mode == "block":
                raise ValueError("block attention masks need attn_implementation sdpa, eager or flex_attention "
                                 "(flash attention cannot take a per-sample mask)")
            self.adapter.set_causal(self.model, mode == "causal")
        given = inputs.pop(ROW_POSITIONS, None)  # (B, 3, T) from with_position_ids, or None
        pos_ids = given.transpose(0, 1) if given is not None else self.adapter.position_ids(self.model, inputs)
        if offsets is not None:
            pos_ids = pos_ids - offsets.to(pos_ids.device, pos_ids.dtype)  # (3, B, T) - (B, T)
        packing = self._packing(inputs, mode, block_fn) if masked_units is None else None
        if packing is not None:  # several rows per sequence, kept apart by the mask (vlmbed.models.packing)
            packed = packed_inputs(inputs, packing, self.adapter, self.adapter.image_token_id(self.model))
            packed_masks = packing.masks(text_config, self.dtype, causal=mode == "causal")
            hidden = self.adapter.hidden_states(self.model, packed, packed_masks, packing.pack(pos_ids))  # (P, L, d)
            hidden = packing.unpack(hidden)  # (B, T, d)
        masks = build_attention_masks(mode, text_config, mask, self.dtype, block_fn=block_fn)  # the batch's own
        if packing is None:
            hidden = self.adapter.hidden_states(self.model, inputs, masks, pos_ids)  # (B, T, d)
        pooling = pooling or self.settings.pooling
        if isinstance(positions, str):
            positions = marked_positions(inputs["input_ids"], self.token_id("mark"))  # (B, k)
        if positions is not None:
            emb = at_positions(hidden, positions.to(hidden.device))  # (B, k, d), whatever the pooling
        elif pooling == "marked":
            last = last_marked(inputs["input_ids"], self.token_id("mark")).unsqueeze(1)  # (B, 1)
            emb = at_positions(hidden, last)[:, 0]  # (B, d)
        else:
            emb = POOLING[pooling](hidden, mask)  # (B, d)
        if self.settings.normalize if normalize is None else normalize:
            emb = nn.functional.normalize(emb.float(), dim=-1).to(emb.dtype)
        out = EmbedOutput(embeddings=emb, hidden=hidden, attention_mask=mask, masks=masks, position_ids=pos_ids)
        if token_positions is not None:
            rows, cols = (t.to(hidden.device) for t in token_positions)
            out.token_logits = mlm_logits(self, hidden, rows, cols)  # (M, V)
        if masked_units is not None:
            if "patch_decoder" not in self.heads:
                raise ValueError("masked_units given but no patch decoder: call add_patch_decoder(patch_dim) first")
            image_tokens, unit_mask = (t.to(hidden.device) for t in masked_units)
            out.patch_predictions = self.heads["patch_decoder"](out, image_tokens, unit_mask)
        return out

    def packs(self, inputs: dict, attention: str | None = None) -> bool:
        """Whether a forward of ``inputs`` (mode ``attention``, default the settings') packs its rows into
        shared sequences where that saves work (:mod:`vlmbed.models.packing`): packing is on, the mode has no
        blocks of its own, no flash attention (it takes no per-sample mask), and the family can move these
        images between rows."""
        mode = attention or self.settings.attention
        if self.settings.packing != "auto" or (mode == "block" and inputs.get("segment_ids") is not None):
            return False
        if uses_flash_attention(self.adapter.text_config(self.model)):
            return False
        return self.adapter.pack_media or not self.adapter.has_media(inputs)

    def with_position_ids(self, inputs: dict) -> dict:
        """``inputs`` with the language model's position ids of their rows under ``row_position_ids`` ((B, 3, T),
        rows first, so that cutting the rows cuts them) where the family computes them row by row in Python
        (``adapter.costly_positions``: M-RoPE); a forward of these rows, or of any rows cut from them, reads
        them instead of computing them again (a GradCache step: once per batch, not once per chunk)."""
        if not self.adapter.costly_positions or ROW_POSITIONS in inputs:
            return inputs
        positions = self.adapter.position_ids(self.model, inputs)  # (3, B, T)
        return {**inputs, ROW_POSITIONS: positions.transpose(0, 1)}

    def will_pack(self, inputs: dict, attention: str | None = None) -> bool:
        """Whether a forward of ``inputs`` packs their rows: :meth:`packs`, and the packing saves enough."""
        return self._packing(inputs, attention or self.settings.attention, None) is not None

    def _packing(self, inputs: dict, mode: str, block_fn) -> Packing | None:
        """The packing of this forward's rows, or None (see :meth:`packs`; also None where it would not save
        at least 10% of the token slots)."""
        if block_fn is not None or not self.packs(inputs, mode):
            return None
        return plan_packing(inputs["attention_mask"], hidden_size=self.hidden_size)

    def add_patch_decoder(self, patch_dim: int, merge: int = 2) -> None:
        """Attach MoCa's patch decoder (a copy of the middle LM layer + linear head); training only."""
        self.heads["patch_decoder"] = PatchDecoder(self, patch_dim=patch_dim, merge=merge).to(self.device, self.dtype)

    def embed(self, items: list[Item], role: str) -> torch.Tensor:
        """Embeddings (B, d) of items for a role, with gradients (training)."""
        return self(self.tokenize(items, role)).embeddings

    # ----------------------------------------------------------------- inference
    @torch.inference_mode()
    def encode(
        self,
        inputs,
        role: str = "query",
        batch_size: int = 32,
        show_progress: bool = False,
        to_numpy: bool = True,
        normalize: bool | None = None,
        truncate_dim: int | None = None,
    ):
        """Embed ``inputs`` for ``role`` (default ``"query"``; ``"document"`` for what is searched).

        ``inputs``: one input, or a list of them. An input is a string (text), an :class:`Item`
        (text, image or both, with an optional instruction), or an image alone (a PIL image, or a
        ``pathlib.Path`` to an image file: ``Item(image=...)``). One input gives one vector of shape
        ``(d,)``; a list gives ``(N, d)`` float32, in input order (``(0, d)`` for an empty list).

        ``normalize``: unit-length vectors (``None``: the model's setting, ``vlmbed.json`` ``normalize``,
        true by default). ``truncate_dim``: keep the first ``truncate_dim`` dimensions (Matryoshka
        embeddings), then renormalise when normalising. ``to_numpy=False`` returns a torch tensor.

        Identical items are encoded once; batches hold length-sorted items (text and image items apart, at
        most ``batch_size`` each, under a token budget) and the next batch's images are decoded in a
        background thread (:mod:`vlmbed.models.encode_plan`); the result does not depend on batch size or
        neighbours. See also :meth:`encode_query` and :meth:`encode_document`.
        """
        single = not isinstance(inputs, (list, tuple))
        items = [self._as_item(x, i) for i, x in enumerate([inputs] if single else inputs)]
        normalize = self.settings.normalize if normalize is None else normalize
        dim = self._check_truncate_dim(truncate_dim)
        was_training = self.training
        self.eval()
        plan = plan_encode(items, role, self.encoder, batch_size)  # distinct items, length-sorted token budgets
        out: list[torch.Tensor | None] = [None] * len(plan.unique)
        def prepare(idx: list[int]) -> dict:  # text batches from the plan's token ids; else the processor
            ready = plan.text_batch(self.encoder, idx)
            return ready if ready is not None else self.tokenize([items[plan.unique[j]] for j in idx], role)

        batches = prefetched(prepare, plan.batches, ahead=prefetch_pays(self.device))
        if show_progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc=f"encode ({role})", unit="batch", total=len(plan.batches))
        try:
            for idx, prepared in batches:  # the next batch's inputs are prepared in a background thread
                emb = self._embed_inputs(prepared, normalize, dim)
                for j, e in zip(idx, emb, strict=True):
                    out[j] = e
        finally:
            self.train(was_training)
        result = torch.stack(out)[torch.from_numpy(plan.where)] if out else torch.zeros((0, dim))
        if single:
            result = result[0]
        return result.numpy() if to_numpy else result

    def _encode_batch(self, items: list[Item], role: str, normalize: bool, dim: int) -> torch.Tensor:
        """(B, dim) float32 on CPU: pooled, truncated to ``dim``, then normalised when asked."""
        return self._embed_inputs(self.tokenize(items, role), normalize, dim)

    def _embed_inputs(self, inputs: dict, normalize: bool, dim: int) -> torch.Tensor:
        emb = self(inputs, normalize=False).embeddings.float()  # (B, d) pooled, raw
        emb = emb[:, :dim]  # (B, dim)
        if normalize:
            emb = nn.functional.normalize(emb, dim=-1)
        return emb.cpu()

    def _check_truncate_dim(self, truncate_dim: int | None) -> int:
        size = self.hidden_size
        if truncate_dim is None:
            return size
        if isinstance(truncate_dim, bool) or not isinstance(truncate_dim, int) or not 0 < truncate_dim <= size:
            raise ValueError(f"truncate_dim must be an integer from 1 to the model's dimension {size}, "
                             f"got {truncate_dim!r}")
        return truncate_dim

    def encode_query(self, inputs, instruction: str = "", **kwargs):
        """:meth:`encode` with ``role="query"``; ``instruction`` is given to every item that has none
        (for example ``"Find the image that matches: "``). Other keywords as for :meth:`encode`."""
        if instruction:
            import dataclasses

            single = not isinstance(inputs, (list, tuple))
            items = [self._as_item(x, i) for i, x in enumerate([inputs] if single else inputs)]
            items = [it if it.instruction else dataclasses.replace(it, instruction=instruction) for it in items]
            inputs = items[0] if single else items
        return self.encode(inputs, role="query", **kwargs)

    def encode_document(self, inputs, **kwargs):
        """:meth:`encode` with ``role="document"`` (corpus items, candidates). Keywords as for :meth:`encode`."""
        return self.encode(inputs, role="document", **kwargs)

    @staticmethod
    def _as_item(x, index: int) -> Item:
        """One input of :meth:`encode` as an Item: text (str), an Item, or an image alone (PIL image, Path)."""
        from PIL import Image

        if isinstance(x, Item):
            return x
        if isinstance(x, str):
            if not x:
                raise ValueError(f"input {index} is an empty string; give text, an image, or an Item with either")
            return Item(text=x)
        if isinstance(x, (Image.Image, Path)):
            return Item(image=x)
        raise TypeError(f"input {index}: cannot embed a {type(x).__name__}; give a string (text), a PIL image, "
                        "a pathlib.Path to an image file, or vlmbed.Item(text=..., image=..., instruction=...)")

    @property
    def hidden_size(self) -> int:
        return self.adapter.text_config(self.model).hidden_size

    @staticmethod
    def similarity(a, b) -> np.ndarray | torch.Tensor:
        """Pairwise similarity (dot product; cosine for normalised embeddings): (N, d) x (M, d) -> (N, M)."""
        if torch.is_tensor(a):
            return a @ b.T
        return np.asarray(a) @ np.asarray(b).T
