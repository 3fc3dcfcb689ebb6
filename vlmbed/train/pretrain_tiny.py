"""Build (or find in the cache) the pre-trained tiny VLM: the data half of :mod:`vlmbed.models.pretrained_tiny`.

``vlmbed.models`` imports no upper layer, so the pre-training samples are assembled here, from the training
split of the built-in real-image data, and handed to the model layer's build:

- ``digit_caption``: every training digit, plain and tinted, with its caption ("a handwritten seven", "a red seven");
- ``scene_caption``: every training scene with its caption ("a red three left of a blue five at the top");
- ``vqa``: every question about every training scene, answered ("What colour is the three? Answer: red");
- ``text``: the scenes' text corpus (captions, questions with answers) for language modelling.

Held out for the build log: test-split scenes and test-split single digits (none of their source images is in
the training split). Without ``vlmbed.data.scenes`` the single digits alone are used (captions, three questions).
"""

from __future__ import annotations

from pathlib import Path

from vlmbed.models import pretrained_tiny as pt
from vlmbed.models.pretrained_tiny import ANSWER, PretrainConfig, PretrainData

_ANSWER = ANSWER.rstrip(" ")


def ensure_pretrained_tiny(cfg: PretrainConfig | None = None, out: str | Path | None = None, force: bool = False,
                           log=None) -> Path:
    """The cached pre-trained tiny model of ``cfg`` (default: the built-in config), built now if missing."""
    return pt.ensure_pretrained_tiny(cfg or PretrainConfig(), load_data, out=out, force=force, log=log)


def resolve_input_model(model_cfg, work_dir: Path, previous: Path | None = None) -> Path:
    """:func:`vlmbed.models.build.resolve_model_path`, building ``tiny_pretrained`` when the cache lacks it
    (the stage runner calls this on the main process first; the others then find it built)."""
    from vlmbed.models.build import resolve_model_path

    if model_cfg.path == "tiny_pretrained":
        return ensure_pretrained_tiny(pt.pretrained_config(model_cfg))
    return resolve_model_path(model_cfg, work_dir, previous)


def build_pretrained_tiny(folder: str | Path, cfg: PretrainConfig, log=None) -> dict:
    """Build into ``folder`` without the cache (tests, experiments)."""
    cfg = cfg.resolved()
    return pt.build_pretrained_tiny(folder, cfg, load_data(cfg), log=log)


def load_data(cfg: PretrainConfig) -> PretrainData:
    return _scenes_data(cfg) if cfg.data == "scenes" else _digits_data(cfg)


def _scenes_data(cfg: PretrainConfig) -> PretrainData:
    from vlmbed.data import scenes
    captions = list(scenes.captioned_images("train"))
    vqa = list(scenes.vqa_triples("train"))
    texts = list(scenes.text_corpus("train"))
    is_scene = [img.size == (scenes.CANVAS, scenes.CANVAS) for img, _ in captions]
    train = {"digit_caption": [(img, "", cap) for (img, cap), sc in zip(captions, is_scene, strict=True) if not sc],
             "scene_caption": [(img, "", cap) for (img, cap), sc in zip(captions, is_scene, strict=True) if sc],
             "vqa": [(img, q + _ANSWER, " " + a) for img, q, a in vqa],
             "text": [(None, "", t) for t in texts]}
    if cfg.n_train is not None:
        train = {k: v[: cfg.n_train] for k, v in train.items()}
    test_scenes = scenes.build_scenes("test")[: cfg.eval_images]
    return PretrainData(
        train=train,
        heldout={"scenes": [(s.image(), s.caption, [d.word for d in s.digits]) for s in test_scenes],
                 "digits": _heldout_digits(cfg)},
        words=scenes.SCENE_WORDS,
    )


def _heldout_digits(cfg: PretrainConfig) -> list[tuple]:
    from vlmbed.data.digits import WORDS, _load, digit_image, split_indices

    _, labels = _load()
    test = split_indices()["test"][: cfg.eval_images]
    return [(digit_image(int(i)), f"a handwritten {WORDS[int(labels[i])]}", [WORDS[int(labels[i])]]) for i in test]


def _digits_data(cfg: PretrainConfig) -> PretrainData:
    from vlmbed.data.digits import WORDS, _load, digit_image, split_indices

    _, labels = _load()
    train_idx = split_indices()["train"]
    if cfg.n_train is not None:
        train_idx = train_idx[: cfg.n_train]
    captions, vqa = [], []
    for i in train_idx:
        y, img = int(labels[i]), digit_image(int(i))
        captions.append((img, "", f"a handwritten {WORDS[y]}"))
        vqa += [(img, "What digit is this?" + _ANSWER, " " + WORDS[y]),
                (img, "Is this digit even?" + _ANSWER, " yes" if y % 2 == 0 else " no"),
                (img, "What is this digit plus one?" + _ANSWER, " " + WORDS[y + 1])]
    texts = [f"{WORDS[y]} plus one is {WORDS[y + 1]}." for y in range(10)]
    texts += [f"the digit {WORDS[y]} is {'even' if y % 2 == 0 else 'odd'}." for y in range(10)]
    texts += [f"{WORDS[a]} is {'greater' if a > b else 'less'} than {WORDS[b]}." for a in range(10) for b in range(10)
              if a != b]
    return PretrainData(train={"digit_caption": captions, "vqa": vqa, "text": [(None, "", t) for t in texts]},
                        heldout={"digits": _heldout_digits(cfg)}, words="")
