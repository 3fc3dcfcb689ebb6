"""Typed schema of a run: YAML instances, dotted ``key=value`` overrides, unknown keys rejected by name.

A recipe is an ordered list of stages; each stage is a complete runnable config (model, data,
objectives, training, evaluation). Recipe-level ``defaults`` are merged into every stage, and
overrides apply to every stage (``train.lr=1e-4``) or to one (``stages.NAME.train.lr=1e-4``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PACKAGE_RECIPES = Path(__file__).parent / "recipes"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraSettings(Strict):
    """Parameter-efficient training with LoRA (peft), injected in place so the model stays a plain HF model."""

    enabled: bool = False
    r: int = Field(16, gt=0)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target: Literal["language", "language_and_vision"] = "language"  # where adapters go
    modules: list[str] | None = None  # leaf module names (default: every attention and MLP projection)
    qlora: bool = False  # 4-bit base weights (needs bitsandbytes and a CUDA device)
    export: Literal["merged", "adapter"] = "merged"  # what the stage's model/ folder holds (adapter/ always)


class ModelConfig(Strict):
    path: str = "tiny"  # a model folder, "previous" (the previous stage's output) or "tiny" (built in code)
    tiny_family: Literal["qwen2_vl", "qwen2_5_vl"] = "qwen2_vl"
    tiny_seed: int = 0  # random initialisation of the tiny model
    attention: Literal["causal", "bidirectional"] = "causal"
    pooling: Literal["last", "mean"] = "last"
    normalize: bool = True
    append_eos: bool = True
    templates: dict[str, str] | None = None  # per-role templates with {instruction}, {image}, {text}
    # per-role chat formats rendered by the processor's chat template, e.g.
    # {query: {system: "{instruction}", generation_prompt: false, suffix: "<|endoftext|>"}} (docs/recipes.md)
    chat: dict[str, dict[str, str | bool]] | None = None
    max_text_tokens: int | None = 512
    # every training sequence's bound in tokens, image tokens counted (None: no bound); images are never cut
    max_length: int | None = Field(None, gt=0)
    # image resolution bounds in pixels (None: the checkpoint processor's own); applied in training, cost
    # estimation, eval, encode and serve alike, and saved with the model's processor
    min_pixels: int | None = Field(None, gt=0)
    max_pixels: int | None = Field(None, gt=0)
    # role (mask, mark) -> a token the vocabulary already has, instead of adding vlmbed's <|mask|> / <|emb|>
    tokens: dict[str, str] | None = None
    # weights' dtype while training: auto = float32 master weights (mixed precision autocasts the compute);
    # bfloat16/float16 = pure low-precision training with plain AdamW (small updates are lost: a warning)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    attn_implementation: str | None = None
    gradient_checkpointing: bool = False
    lora: LoraSettings = Field(default_factory=lambda: LoraSettings())


class SourceConfig(Strict):
    """One data source (see docs/data-formats.md). Contrastive pairs: jsonl, mmeb_train, table, digits;
    pre-training documents: documents, digits_unlabeled."""

    format: Literal["digits", "jsonl", "mmeb_train", "table", "documents", "digits_unlabeled"] = "jsonl"
    path: str | None = None  # jsonl / documents: a file; mmeb_train / table: a folder or one file
    image_root: str | None = None  # mmeb_train / table: folder image paths are relative to
    subsets: list[str] | None = None  # mmeb_train: subset folders to read (None: every subset under path)
    columns: dict[str, str] | None = None  # table: Example field -> column name (e.g. {query: question})
    task: str | None = None  # jsonl / table: task of records without one (default: the file or folder name)
    tasks: list[str] | None = None  # digits: subset of task names
    split: str | None = None  # digits: train | test (default train); mmeb_train: original (default) | ...
    weight: float = 1.0
    max_examples: int | None = None
    max_per_task: int | None = Field(None, gt=0)  # first N of each task (VLM2Vec's --num_sample_per_subset)
    label_fraction: float = Field(1.0, gt=0, le=1)  # digits: keep pairs for this fraction of the images
    label_seed: int = 0  # digits: which images keep their pairs

    @model_validator(mode="after")
    def _needs_path(self):
        if self.format in ("jsonl", "documents", "mmeb_train", "table") and not self.path:
            raise ValueError(f"a {self.format} data source needs `path`")
        for key, formats in (("subsets", ("mmeb_train",)), ("columns", ("table",)),
                             ("image_root", ("mmeb_train", "table"))):
            if getattr(self, key) is not None and self.format not in formats:
                raise ValueError(f"`{key}` applies to {' / '.join(formats)} sources, not {self.format}")
        return self

    @property
    def is_pretraining(self) -> bool:
        return self.format in ("documents", "digits_unlabeled")


class BatchingConfig(Strict):
    """How examples become batches (see vlmbed.data.batching)."""

    mode: Literal["fixed", "token_budget"] = "fixed"  # token_budget: MoCa's cost-bucketed micro-batches
    max_tokens: int = Field(12800, gt=0)  # token budget of one device's micro-batch (token_budget mode)
    cost: Literal["moca", "tokens"] = "moca"  # moca: text + 4 * image tokens + 2 * images; tokens: length
    homogeneous: bool = False  # every batch from one task (source dataset)
    unique_positives: bool = False  # never two examples with the same positive in one (global) batch
    task_weights: dict[str, float] | None = None  # sampling weight per task (None: proportional to size)
    cost_cache: str | None = None  # folder for cached per-example costs (default: <output_dir>/cache)


class DataConfig(Strict):
    sources: list[SourceConfig] = Field(default_factory=lambda: [SourceConfig(format="digits")])
    batch_size: int = Field(32, gt=0)
    num_negatives: int | None = None  # explicit hard negatives per query (None: all the record has)
    on_bad_image: Literal["error", "skip"] = "error"  # skip: drop (and count) records whose image is bad
    image_check: Literal["exists", "header", "none"] = "exists"  # at load; images are decoded in the loader
    num_workers: int = 0
    seed: int = 0
    batching: BatchingConfig = Field(default_factory=BatchingConfig)


class InfoNCEConfig(Strict):
    name: Literal["infonce"] = "infonce"
    weight: float = 1.0
    temperature: float = Field(0.05, gt=0)
    share_negatives: bool = True  # hard negatives of every query are negatives for all queries
    mask_same_group: bool = True  # in-batch items sharing the positive/label, and hard negatives repeating
    # a positive of the query's group, are not negatives
    symmetric: bool = False  # add the document -> query direction


class MLMConfig(Strict):
    """Masked-token prediction on the (bidirectional) backbone; MoCa stage 1, CoCoA MNTP."""

    name: Literal["mlm"] = "mlm"
    weight: float = 1.0
    ratio: float = Field(0.4, gt=0, lt=1)  # share of non-special text tokens replaced by <|mask|>
    shift: Literal[0, 1] = 1  # 1: predict x_i from h_{i-1} (MoCa paper); 0: same position (MoCa code)


class MAEConfig(Strict):
    """Masked image-unit reconstruction through a patch decoder; MoCa stage 1."""

    name: Literal["mae"] = "mae"
    weight: float = 0.5  # MoCa paper 0.5; released script 0.1
    ratio: float = Field(0.5, gt=0, lt=1)  # share of merged units (one <|image_pad|> token each) masked
    noise: Literal["per_patch", "shared"] = "per_patch"  # paper: fresh Gaussian per patch; code: one shared


ObjectiveConfig = Annotated[InfoNCEConfig | MLMConfig | MAEConfig, Field(discriminator="name")]
RECONSTRUCTION = ("mlm", "mae")


class TrainConfig(Strict):
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_ratio: float = Field(0.05, ge=0, le=1)
    schedule: Literal["cosine", "linear"] = "cosine"  # decay after warm-up, to 0 (linear: HF's, MoCa/CoCoA code)
    max_steps: int | None = None
    epochs: float = 1.0
    grad_clip: float | None = 1.0
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    save_every: int | None = None
    log_every: int = 10
    seed: int = 0
    resume: bool = True  # continue from the newest checkpoint in the stage folder if there is one
    progress: bool = True
    keep_checkpoints: int = Field(2, ge=1)  # newest K checkpoints kept
    gradcache_chunk: int | None = Field(None, gt=0)  # GradCache: sequences per chunk (None: no GradCache)
    gather_across_devices: bool = True  # in-batch negatives from every process (gradient-carrying gather)
    max_nonfinite: int = Field(5, ge=1)  # stop after this many non-finite losses in a row (each is skipped)
    freeze_vision: bool = False  # full fine-tuning of the language model only
    # micro-batches per optimizer step (gradients summed, each micro-batch's loss divided by this); with
    # contrastive objectives the negatives stay those of each micro-batch (use GradCache for larger batches)
    grad_accum: int = Field(1, ge=1)


class EvalConfig(Strict):
    suite: Literal["digits", "none"] = "digits"
    tasks: list[str] | None = None
    max_queries: int | None = None
    batch_size: int = 64
    before: bool = False  # also evaluate the untrained model (for the report)


class StageConfig(Strict):
    name: str
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    objectives: list[ObjectiveConfig] = Field(default_factory=lambda: [InfoNCEConfig()])
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @property
    def is_reconstruction(self) -> bool:
        """A pre-training stage: reconstruction objectives on documents (no contrastive pairs)."""
        return any(o.name in RECONSTRUCTION for o in self.objectives)

    @model_validator(mode="after")
    def _objectives_match_data(self):
        kinds = {o.name in RECONSTRUCTION for o in self.objectives}
        if len(kinds) > 1:
            raise ValueError("a stage mixes reconstruction (mlm, mae) and contrastive objectives; use two stages")
        pre = {s.is_pretraining for s in self.data.sources}
        if len(pre) > 1 or (pre and pre.pop() != self.is_reconstruction):
            raise ValueError("data.sources must be documents/digits_unlabeled for mlm/mae objectives and "
                             "jsonl/digits for contrastive ones")
        if self.is_reconstruction and self.train.gradcache_chunk:
            raise ValueError("train.gradcache_chunk applies to contrastive objectives only")
        return self


class RecipeConfig(Strict):
    name: str = "recipe"
    output_dir: str = "runs/recipe"
    stages: list[StageConfig]

    @model_validator(mode="after")
    def _unique_stage_names(self):
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        if not self.stages:
            raise ValueError("a recipe needs at least one stage")
        return self

    def stage(self, name: str) -> StageConfig:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage {name!r} in recipe {self.name!r}; stages: {[s.name for s in self.stages]}")


class ConfigError(ValueError):
    """A config problem, with the offending key spelled out."""


# ---------------------------------------------------------------------------- loading


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    """A path to a YAML file, or the name of a recipe shipped in the package (``quickstart``)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    shipped = PACKAGE_RECIPES / f"{Path(str(name_or_path)).stem}.yaml"
    if shipped.exists():
        return shipped
    known = sorted(p.stem for p in PACKAGE_RECIPES.glob("*.yaml"))
    raise FileNotFoundError(f"recipe {name_or_path!r} not found (not a file; shipped recipes: {known})")


def load_recipe(name_or_path: str | Path, overrides: list[str] | None = None) -> RecipeConfig:
    """Read a recipe YAML, merge defaults into stages, apply ``key=value`` overrides, validate."""
    path = resolve_recipe_path(name_or_path)
    raw = yaml.safe_load(path.read_text()) or {}
    return build_recipe(raw, overrides, source=str(path))


def build_recipe(raw: dict, overrides: list[str] | None = None, source: str = "<dict>") -> RecipeConfig:
    raw = copy.deepcopy(raw)
    defaults = raw.pop("defaults", {}) or {}
    stages = raw.pop("stages", None)
    if not stages:
        raise ConfigError(f"{source}: a recipe needs a non-empty `stages` list")
    merged = [_deep_merge(defaults, s) for s in stages]
    top = raw
    for item in overrides or []:
        key, value = _split_override(item)
        parts = key.split(".")
        if parts[0] in ("name", "output_dir"):
            top[parts[0]] = value
        elif parts[0] == "stages":
            if len(parts) < 3:
                raise ConfigError(f"override {item!r}: use stages.<stage name>.<key>=<value>")
            target = [s for s in merged if s.get("name") == parts[1]]
            if not target:
                raise ConfigError(f"override {item!r}: no stage named {parts[1]!r}")
            _set_dotted(target[0], parts[2:], value)
        else:
            for s in merged:
                _set_dotted(s, parts, value)
    top["stages"] = merged
    try:
        return RecipeConfig.model_validate(top)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, source)) from None


def _split_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value (for example train.lr=2e-5)")
    key, text = item.split("=", 1)
    return key.strip(), yaml.safe_load(text) if text.strip() else None


def _set_dotted(d: dict, parts: list[str], value: Any) -> None:
    for p in parts[:-1]:
        nxt = d.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"cannot set {'.'.join(parts)}: {p} is not a section")
        d = nxt
    d[parts[-1]] = value


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _explain(exc: ValidationError, source: str) -> str:
    lines = [f"invalid config in {source}:"]
    for err in exc.errors():
        loc = list(err["loc"])
        if len(loc) >= 2 and loc[0] == "stages" and isinstance(loc[1], int):
            loc = ["stages", f"#{loc[1]}"] + loc[2:]
        key = ".".join(str(p) for p in loc if not (isinstance(p, str) and p in ("infonce",)))
        if err["type"] == "extra_forbidden":
            lines.append(f"  unknown key `{key}` (check the spelling; see docs/recipes for the schema)")
        else:
            lines.append(f"  `{key}`: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def dump_yaml(model: BaseModel) -> str:
    return yaml.safe_dump(model.model_dump(mode="json"), sort_keys=False)
