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
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveInt,
    SerializeAsAny,
    ValidationError,
    model_validator,
)

from vlmbed.data import FORMAT_OPTIONS, FORMATS
from vlmbed.models.adapters import PRESETS, preset_settings
from vlmbed.objectives import OBJECTIVES, ObjectiveSettings, infonce, mae, mlm

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
    # a model folder, "previous" (the previous stage's output), "tiny" (random, built in code) or "tiny_pretrained"
    # (the tiny model causally pre-trained on the built-in real images, cached: vlmbed.models.pretrained_tiny)
    path: str = "tiny"
    # a released embedding model's encoding (docs/backbones.md): fills every model setting this config
    # leaves unset (chat, pooling, append_eos, normalize, pixel bounds, lengths); what is set explicitly wins
    preset: Literal[tuple(PRESETS)] | None = None
    tiny_family: Literal["qwen2_vl", "qwen2_5_vl"] = "qwen2_vl"
    tiny_seed: int = 0  # random initialisation of the tiny model
    # block: per-sample attention blocks from the batch (segment ids + which segment sees which; CoCoA's
    # [A | EOS | B], one segment per turn); a batch without blocks is one segment (= bidirectional)
    attention: Literal["causal", "bidirectional", "block"] = "causal"
    block_causal: bool = False  # block attention intersected with causal order (MuCo's per-turn mask)
    # auto: a forward of mixed-length rows packs them into fewer sequences kept apart by the mask, where that
    # saves at least 10% of the token slots (same vectors and gradients; vlmbed.models.packing); off: pad
    packing: Literal["auto", "off"] = "auto"
    pooling: Literal["last", "mean", "marked"] = "last"  # marked: the hidden state at the last <|emb|> token
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

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data):
        if isinstance(data, dict) and data.get("preset") in PRESETS:
            data = {**preset_settings(data["preset"]), **data}
        return data


class SourceConfig(Strict):
    """One data source (see docs/data-formats.md): a format of the ``vlmbed.data.FORMATS`` table, which
    says what it yields (contrastive examples: jsonl, mmeb_train, table, digits; pre-training documents:
    documents, digits_unlabeled), whether it needs ``path`` and which format-specific keys it reads."""

    format: Literal[tuple(FORMATS)] = "jsonl"  # a key of vlmbed.data.FORMATS
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
        if FORMATS[self.format].needs_path and not self.path:
            raise ValueError(f"a {self.format} data source needs `path`")
        for key in FORMAT_OPTIONS:
            formats = [name for name, f in FORMATS.items() if key in f.options]
            if getattr(self, key) is not None and self.format not in formats:
                raise ValueError(f"`{key}` applies to {' / '.join(formats)} sources, not {self.format}")
        return self

    @property
    def is_pretraining(self) -> bool:
        """The format yields pre-training documents (reconstruction stages), not contrastive examples."""
        return FORMATS[self.format].yields == "documents"


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


# objectives live in vlmbed/objectives/ (one file each, the OBJECTIVES table); their config classes are re-exported
InfoNCEConfig, MLMConfig, MAEConfig = infonce.InfoNCEConfig, mlm.MLMConfig, mae.MAEConfig


def _objective_configs(value):
    """Read each ``objectives`` entry into its table row's config class (a clear error for an unknown name)."""
    if not isinstance(value, list):
        return value
    out = []
    for i, entry in enumerate(value):
        if isinstance(entry, ObjectiveSettings):
            out.append(entry)
            continue
        if not isinstance(entry, dict) or "name" not in entry:
            raise ValueError(f"objectives[{i}] must be a mapping with a `name` ({', '.join(sorted(OBJECTIVES))})")
        if entry["name"] not in OBJECTIVES:
            raise ValueError(f"objectives[{i}]: unknown objective {entry['name']!r}; known: "
                             f"{', '.join(sorted(OBJECTIVES))}")
        try:
            out.append(OBJECTIVES[entry["name"]].config.model_validate(entry))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r})"
                                 for e in exc.errors())
            raise ValueError(f"objectives[{i}] ({entry['name']}): {problems}") from None
    return out


class TrainConfig(Strict):
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_ratio: float = Field(0.05, ge=0, le=1)
    warmup_steps: int | None = Field(None, ge=0)  # warm-up in optimizer steps; overrides warmup_ratio when set
    # after warm-up: cosine / linear decay to 0 (linear: HF's, MoCa/CoCoA code) or constant (HF's, MuCo code)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
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
    # GradCache's gradient-free first pass: rows per forward (auto: 4 x the chunk; None: the chunk); used only
    # when no dropout is active, since the replay must then reproduce no random draw
    gradcache_embed_chunk: PositiveInt | Literal["auto"] | None = "auto"
    gather_across_devices: bool = True  # in-batch negatives from every process (gradient-carrying gather)
    max_nonfinite: int = Field(5, ge=1)  # stop after this many non-finite losses in a row (each is skipped)
    freeze_vision: bool = False  # full fine-tuning of the language model only
    # micro-batches per optimizer step (gradients summed, each micro-batch's loss divided by this); with
    # contrastive objectives the negatives stay those of each micro-batch (use GradCache for larger batches)
    grad_accum: int = Field(1, ge=1)
    # experiment trackers fed with every metrics.jsonl row (vlmbed.train.tracking): tensorboard, wandb
    report_to: list[Literal["tensorboard", "wandb"]] = Field(default_factory=list)
    wandb_mode: Literal["offline", "online"] = "offline"  # offline: `wandb sync` the run folder later


class EvalConfig(Strict):
    suite: Literal["digits", "scenes", "none"] = "digits"
    tasks: list[str] | None = None
    max_queries: int | None = None
    batch_size: int = 64
    before: bool = False  # also evaluate the untrained model (for the report)


class StageConfig(Strict):
    name: str
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    objectives: Annotated[list[SerializeAsAny[ObjectiveSettings]], BeforeValidator(_objective_configs)] = Field(
        default_factory=lambda: [InfoNCEConfig()])
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @property
    def kind(self) -> str:
        """What the stage's objectives are: ``contrastive`` or ``reconstruction`` (one kind per stage)."""
        return OBJECTIVES[self.objectives[0].name].kind

    @property
    def is_reconstruction(self) -> bool:
        """A pre-training stage: reconstruction objectives (on documents, or on pairs: CoCoA's bridge)."""
        return self.kind == "reconstruction"

    @property
    def consumes(self) -> str:
        """What the stage's sources yield: ``examples`` or ``documents`` (``Objective.consumes``)."""
        return OBJECTIVES[self.objectives[0].name].consumes

    @model_validator(mode="after")
    def _objectives_match_data(self):
        if not self.objectives:
            raise ValueError("a stage needs at least one objective")
        kinds = {OBJECTIVES[o.name].kind: o.name for o in self.objectives}
        if len(kinds) > 1:
            raise ValueError(f"a stage mixes {' and '.join(f'{k} ({n})' for k, n in kinds.items())} objectives; "
                             "use two stages")
        reads: dict[str, list[str]] = {}  # what the objectives' batches are made from -> their names
        for o in self.objectives:
            reads.setdefault(OBJECTIVES[o.name].consumes, []).append(o.name)
        if len(reads) > 1:
            raise ValueError("a stage mixes objectives that read " + " and ".join(
                f"{k} ({'/'.join(n)})" for k, n in reads.items()) + "; use two stages")
        ((wanted, who),) = reads.items()
        bad = list(dict.fromkeys(s.format for s in self.data.sources if FORMATS[s.format].yields != wanted))
        if bad:
            fits = "/".join(name for name, f in FORMATS.items() if f.yields == wanted)
            names = f"the {'/'.join(who)} objective" + ("s read" if len(who) > 1 else " reads")
            raise ValueError(f"data.sources: {names} {wanted} ({fits} sources), but {', '.join(bad)} "
                             f"{'yields' if len(bad) == 1 else 'yield'} {FORMATS[bad[0]].yields}")
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
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path.resolve()
    shipped = PACKAGE_RECIPES / f"{Path(str(name_or_path)).stem}.yaml"
    if shipped.exists() and path.suffix in ("", ".yaml", ".yml") and len(path.parts) == 1:
        return shipped
    known = sorted(p.stem for p in PACKAGE_RECIPES.glob("*.yaml"))
    raise FileNotFoundError(f"recipe {str(name_or_path)!r} not found: {path.resolve()} is not a file, and it is not "
                            f"the name of a shipped recipe ({', '.join(known)})")


def load_recipe(name_or_path: str | Path, overrides: list[str] | None = None) -> RecipeConfig:
    """Read a recipe YAML, merge defaults into stages, apply ``key=value`` overrides, validate.

    Input paths written in a recipe file (``data.sources[].path``, ``image_root``, ``model.path``) are
    relative to the recipe file's folder; in a shipped recipe (named, like ``moca``) and in overrides
    they are relative to the working directory. Every input path comes out absolute. Output paths
    (``output_dir``, ``data.batching.cost_cache``) are relative to the working directory.
    """
    path = resolve_recipe_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe is a YAML mapping with `stages` (got {type(raw).__name__})")
    shipped = path.parent == PACKAGE_RECIPES.resolve()
    return build_recipe(raw, overrides, source=str(path), base_dir=None if shipped else path.parent)


def build_recipe(raw: dict, overrides: list[str] | None = None, source: str = "<dict>",
                 base_dir: str | Path | None = None) -> RecipeConfig:
    """A validated recipe from a dict (a parsed YAML file) and ``key=value`` overrides.

    Relative input paths of ``raw`` resolve against ``base_dir`` (the recipe file's folder; None: the
    working directory), those of overrides against the working directory. Errors name the offending key,
    the stage by name, and the override that set it (or ``source`` when the file did).
    """
    raw = copy.deepcopy(raw)
    defaults = raw.pop("defaults", {}) or {}
    stages = raw.pop("stages", None)
    if not stages or not isinstance(stages, list):
        raise ConfigError(f"{source}: a recipe needs a non-empty `stages` list")
    merged = [_deep_merge(defaults, s) if isinstance(s, dict) else s for s in stages]
    if base_dir is not None:
        for s in merged:
            _resolve_input_paths(s, Path(base_dir))
    top = raw
    applied = [_apply_override(item, top, merged) for item in overrides or []]
    for s in merged:
        _resolve_input_paths(s, Path.cwd())
    top["stages"] = merged
    try:
        return RecipeConfig.model_validate(top)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, source, merged, applied)) from None


# keys (dotted, inside a stage) that name files or folders vlmbed reads
INPUT_PATH_KEYS = ("model.path", "data.sources[].path", "data.sources[].image_root", "objectives[].teacher")
MODEL_PATH_WORDS = ("tiny", "tiny_pretrained", "previous")


def _resolve_input_paths(stage: Any, base: Path) -> None:
    """Make a stage's relative input paths (:data:`INPUT_PATH_KEYS`) absolute against ``base``, in place."""
    if not isinstance(stage, dict):
        return
    model = stage.get("model")
    if isinstance(model, dict) and isinstance(model.get("path"), str) and model["path"] not in MODEL_PATH_WORDS:
        model["path"] = _absolute(model["path"], base)
    data = stage.get("data")
    sources = data.get("sources") if isinstance(data, dict) else None
    for src in sources if isinstance(sources, list) else []:
        for key in ("path", "image_root"):
            if isinstance(src, dict) and isinstance(src.get(key), str) and src[key]:
                src[key] = _absolute(src[key], base)
    objectives = stage.get("objectives")
    for obj in objectives if isinstance(objectives, list) else []:
        if isinstance(obj, dict) and isinstance(obj.get("teacher"), str) and obj["teacher"]:
            obj["teacher"] = _absolute(obj["teacher"], base)  # a teacher-vector cache folder (UniME stage 1)


def _absolute(value: str, base: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _apply_override(item: str, top: dict, stages: list) -> tuple[str, list[str], str | None]:
    """Apply one ``key=value`` override; returns (the override, its key parts inside a stage, stage name)."""
    key, value = _split_override(item)
    parts = key.split(".")
    if parts[0] in ("name", "output_dir") and len(parts) == 1:
        top[parts[0]] = value
        return item, parts, None
    if parts[0] == "stages":
        names = [s.get("name") for s in stages if isinstance(s, dict)]
        if len(parts) < 3:
            raise ConfigError(f"override {item!r}: use stages.<stage name>.<key>=<value> (stages: {names})")
        target = [s for s in stages if isinstance(s, dict) and s.get("name") == parts[1]]
        if not target:
            raise ConfigError(f"override {item!r}: no stage named {parts[1]!r}; stages: {names}")
        _set_dotted(target[0], parts[2:], value, item)
        return item, parts[2:], parts[1]
    for s in stages:
        _set_dotted(s, parts, value, item)
    return item, parts, None


def _split_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value (for example train.lr=2e-5)")
    key, text = item.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {item!r} has no key before `=` (for example train.lr=2e-5)")
    try:
        return key.strip(), yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({exc})") from None


def _set_dotted(d: dict, parts: list[str], value: Any, item: str | None = None) -> None:
    where = f"override {item!r}: " if item else ""
    for p in parts[:-1]:
        nxt = d.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{where}cannot set {'.'.join(parts)}: `{p}` is not a section")
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


def _explain(exc: ValidationError, source: str, stages: list | None = None,
             overrides: list[tuple[str, list[str], str | None]] | None = None) -> str:
    """One line per validation error: the key, the stage by name, and the override that set it (if one did)."""
    lines = [f"invalid config (recipe {source}):"]
    for err in exc.errors():
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p in ("infonce", "mlm", "mae"))]
        stage = None
        if len(loc) >= 2 and loc[0] == "stages" and isinstance(loc[1], int):
            s = (stages or [])[loc[1]] if loc[1] < len(stages or []) else None
            stage = s.get("name") if isinstance(s, dict) and s.get("name") else f"#{loc[1]}"
            loc = loc[2:]
        key = ".".join(str(p) for p in ([f"stages.{stage}"] if stage is not None else []) + loc)
        blame = _blame(loc, stage, overrides or [])
        where = f"override `{blame}`" if blame else f"{source}"
        where += f", stage `{stage}`" if stage is not None else ""
        if err["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown key `{key}` (check the spelling; see docs/recipes.md for the schema)")
        elif key:
            lines.append(f"  {where}: `{key}`: {err['msg']} (got {err.get('input')!r})")
        else:
            lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


def _blame(loc: list, stage: str | None, overrides: list[tuple[str, list[str], str | None]]) -> str | None:
    """The last override whose key is ``loc`` or a section above it (for ``stage``), if any."""
    path = [str(p) for p in loc]
    for item, parts, only in reversed(overrides):
        if only is not None and only != stage:
            continue
        if (stage is None) == (parts[0] in ("name", "output_dir")) and path[: len(parts)] == parts:
            return item
    return None


def dump_yaml(model: BaseModel) -> str:
    return yaml.safe_dump(model.model_dump(mode="json"), sort_keys=False)
