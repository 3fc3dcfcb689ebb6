"""Hard-negative mining: exclusion rules against a brute-force reference, paths, formats, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vlmbed.mine import MineSettings, MiningDataError, mine_hard_negatives, read_training_records

WORDS = "zero one two three four five six seven eight nine digit image photo left right top bottom".split()


@pytest.fixture()
def train_file(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "data" / "imgs").mkdir(parents=True)
    records = []
    for i in range(24):
        task = "t_text" if i < 16 else "t_image"
        rec = {"query": " ".join(rng.choice(WORDS, 4)), "positive": f"answer {' '.join(rng.choice(WORDS, 3))}",
               "task": task}
        if task == "t_image":
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
                tmp_path / "data" / "imgs" / f"{i}.png")
            rec["positive_image"] = f"imgs/{i}.png"
        if i in (0, 1):
            rec["label"] = "same"  # records 0 and 1 share an answer: never each other's negatives
        records.append(rec)
    records[5]["positive"] = records[4]["positive"]  # a duplicate positive: excluded as "the positive"
    path = tmp_path / "data" / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


TOL = 1e-5  # scores of the same items encoded in other batches agree within this


def brute_force(embedder, path, settings: MineSettings) -> list[dict[str, tuple[float, str]]]:
    """Reference, per record: every candidate text -> (score, status) under the rules, scored with encode.

    Status ``in``/``out`` when the rules decide with a margin of TOL to spare, ``tie`` when a score sits
    within TOL of the margin or duplicate threshold (then either decision is right).
    """
    recs = read_training_records(path)
    pool: dict[str, tuple] = {}
    for r in recs:
        entry = pool.setdefault(r.positive.key(), (r.positive, set(), set()))
        entry[1].add(r.task)
        if r.label is not None:
            entry[2].add((r.task, r.label))
    cands = list(pool.values())
    assert len({c[0].text for c in cands}) == len(cands)  # texts name the candidates below
    cvec = embedder.encode([c[0] for c in cands], role="document")
    qvec = embedder.encode([r.query for r in recs], role="query")
    pvec = embedder.encode([r.positive for r in recs], role="document")
    out = []
    for i, r in enumerate(recs):
        pos_score = float(qvec[i] @ pvec[i])
        scored = {}
        for j, (item, tasks, labels) in enumerate(cands):
            score, dup = float(qvec[i] @ cvec[j]), float(cvec[j] @ pvec[i])
            if r.task not in tasks or item.key() in (r.positive.key(), r.query.key()) or (
                    r.label is not None and (r.task, r.label) in labels):
                status = "out"
            else:
                gaps = [pos_score + settings.margin - score, settings.dup_threshold - dup]  # > 0: allowed
                status = "out" if min(gaps) < -TOL else "in" if min(gaps) > TOL else "tie"
            scored[item.text] = (score, status)
        out.append(scored)
    return out


def assert_valid_picks(picks: list[str], scored: dict[str, tuple[float, str]], k: int) -> None:
    """``picks`` are the best allowed candidates, best first, up to ties within TOL: each allowed (or
    tied on a threshold), scores non-increasing, none allowed left out that beats a pick by more than TOL,
    and k of them unless fewer are allowed."""
    assert len(picks) == len(set(picks)) <= k, picks
    assert all(scored[t][1] != "out" for t in picks), [(t, scored[t]) for t in picks]
    scores = [scored[t][0] for t in picks]
    assert all(a >= b - TOL for a, b in zip(scores, scores[1:], strict=False)), scores
    allowed = {t: sc for t, (sc, status) in scored.items() if status == "in" and t not in picks}
    if len(picks) < k:
        assert not allowed, (picks, allowed)
    elif allowed:
        assert min(scores) >= max(allowed.values()) - TOL, (scores, allowed)


def test_pick_check_rejects_wrong_picks():
    scored = {"a": (0.9, "in"), "b": (0.5, "in"), "c": (0.5, "tie"), "d": (0.95, "out"), "e": (0.1, "in")}
    assert_valid_picks(["a", "b"], scored, 2)
    assert_valid_picks(["a", "c"], scored, 2)  # c sits on a threshold: allowed or not
    for wrong in (["a", "d"], ["b", "a"], ["a", "e"], ["a"], ["a", "a"]):
        with pytest.raises(AssertionError):
            assert_valid_picks(wrong, scored, 2)


def negative_texts(record: dict) -> list[str]:
    return [n["text"] for n in record["negatives"]]  # every positive in the fixture has text


def test_mined_negatives_match_reference_and_rules(train_file, tmp_path, embedder):
    settings = MineSettings(k=3, dup_threshold=0.999, margin=0.05)
    out = tmp_path / "train.neg.jsonl"
    report = mine_hard_negatives(None, train_file, out, settings, embedder=embedder)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    source = [json.loads(line) for line in train_file.read_text().splitlines()]
    assert len(written) == 24 and report.records == 24
    for original, rec in zip(source, written, strict=True):  # every other field unchanged
        assert {k: v for k, v in rec.items() if k not in ("negatives", "positive_image")} == \
            {k: v for k, v in original.items() if k not in ("negatives", "positive_image")}
    expected = brute_force(embedder, train_file, settings)
    for i, (rec, scored) in enumerate(zip(written, expected, strict=True)):
        assert_valid_picks(negative_texts(rec), scored, settings.k), f"record {i}"
        assert rec["positive"] not in [n.get("text") for n in rec["negatives"]]
    assert written[0]["positive"] not in [n.get("text") for n in written[1]["negatives"]]  # same label
    assert written[1]["positive"] not in [n.get("text") for n in written[0]["negatives"]]
    assert report.excluded_positive > 0 and report.excluded_label > 0
    assert report.negatives_written == sum(len(r["negatives"]) for r in written)


def test_thresholds_hold_and_paths_are_relative_to_the_output(train_file, tmp_path, embedder):
    settings = MineSettings(k=4, dup_threshold=0.6, margin=0.0)
    out = tmp_path / "elsewhere" / "neg.jsonl"
    report = mine_hard_negatives(None, train_file, out, settings, embedder=embedder)
    assert report.excluded_duplicate > 0 and report.excluded_false_negative > 0
    from vlmbed.data.jsonl import read_jsonl

    examples = read_jsonl(out)  # the generic reader loads the mined file, images resolved from its folder
    q = embedder.encode([ex.query for ex in examples], role="query")
    p = embedder.encode([ex.positive for ex in examples], role="document")
    negs = [(i, neg) for i, ex in enumerate(examples) for neg in ex.negatives]
    n = embedder.encode([neg for _, neg in negs], role="document")
    for (i, neg), vec in zip(negs, n, strict=True):
        assert vec @ p[i] < 0.6 + 1e-5 and q[i] @ vec <= q[i] @ p[i] + 1e-5
        assert neg.image is None or neg.image.exists()
    assert negs
    image_records = [json.loads(line) for line in out.read_text().splitlines()][16:]
    assert image_records[0]["positive_image"] == "../data/imgs/16.png"


def test_any_task_and_keep_existing(train_file, tmp_path, embedder):
    lines = train_file.read_text().splitlines()
    first = json.loads(lines[0])
    first["negatives"] = [{"text": "given negative"}]
    lines[0] = json.dumps(first)
    train_file.write_text("\n".join(lines) + "\n")
    out = tmp_path / "any.jsonl"
    mine_hard_negatives(None, train_file, out, MineSettings(k=20, same_task=False, keep_existing=True, margin=None),
                        embedder=embedder)
    rec = json.loads(out.read_text().splitlines()[0])
    assert rec["negatives"][0] == {"text": "given negative"}
    assert any("image" in n for n in rec["negatives"])  # candidates from the other task too


def test_corpus_mining(train_file, tmp_path, embedder):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"id": i, "text": f"corpus doc {w}"}) for i, w in enumerate(WORDS)))
    out = tmp_path / "c.jsonl"
    mine_hard_negatives(None, train_file, out, MineSettings(k=2, margin=None), corpus=corpus, embedder=embedder)
    for line in out.read_text().splitlines():
        negs = json.loads(line)["negatives"]
        assert len(negs) == 2 and all(n["text"].startswith("corpus doc") for n in negs)


def test_bad_records_name_file_and_line(tmp_path, embedder):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"query": "q", "positive": "p"}\n{"query": "q2"}\n')
    with pytest.raises(MiningDataError, match=r"bad.jsonl:2: record needs `positive`"):
        mine_hard_negatives(None, path, tmp_path / "o.jsonl", embedder=embedder)
    path.write_text('{"query": "q", "positive": "p"}\n{"query": "q2", "positive_image": "missing.png"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        mine_hard_negatives(None, path, tmp_path / "o.jsonl", embedder=embedder)
    report = mine_hard_negatives(None, path, tmp_path / "o.jsonl", embedder=embedder, on_bad="skip")
    assert len(report.skipped) == 1 and "bad.jsonl:2" in report.skipped[0]
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 2  # the record is still written


def test_cli(train_file, tmp_path, tiny_model_dir):
    from vlmbed.cli import _register, app

    _register()
    out = tmp_path / "cli.neg.jsonl"
    r = CliRunner().invoke(app, ["mine", "--model", str(tiny_model_dir), "--input", str(train_file), "--out",
                                 str(out), "-k", "2", "--margin", "-1"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["records"] == 24 and summary["negatives_written"] == 48
    assert all(len(json.loads(line)["negatives"]) == 2 for line in out.read_text().splitlines())


def _with_curated(train_file, rows: dict[int, list]) -> None:
    lines = train_file.read_text().splitlines()
    for i, negatives in rows.items():
        rec = json.loads(lines[i])
        rec["negatives"] = negatives
        lines[i] = json.dumps(rec)
    train_file.write_text("\n".join(lines) + "\n")


def test_curated_negatives_are_kept_by_default_and_counted(train_file, tmp_path, embedder):
    source = [json.loads(line) for line in train_file.read_text().splitlines()]
    curated = {0: [{"text": "given negative"}, source[3]["positive"]], 2: ["another given one"]}
    _with_curated(train_file, curated)
    out = tmp_path / "kept.jsonl"
    report = mine_hard_negatives(None, train_file, out, MineSettings(k=20, margin=None), embedder=embedder)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    # k=20 asks for more candidates than task t_text has: short records still keep what they came with
    assert written[0]["negatives"][:2] == curated[0] and written[2]["negatives"][:1] == curated[2]
    assert report.records_with_existing == 2 and report.existing_kept == 3 and report.existing_dropped == 0
    assert report.short > 0
    mined_texts = [n.get("text") for n in written[0]["negatives"][2:]]
    assert source[3]["positive"] not in mined_texts  # a curated negative is not mined a second time
    assert report.excluded_existing >= 1
    replaced = mine_hard_negatives(None, train_file, out, MineSettings(k=2, margin=None, keep_existing=False),
                                   embedder=embedder)
    assert replaced.existing_dropped == 3 and replaced.existing_kept == 0
    assert json.loads(out.read_text().splitlines()[0])["negatives"][0] != {"text": "given negative"}


def test_cli_keeps_or_replaces_curated_negatives_and_says_so(train_file, tmp_path, tiny_model_dir):
    from vlmbed.cli import _register, app

    _register()
    _with_curated(train_file, {0: [{"text": "given negative"}]})
    out = tmp_path / "cli.neg.jsonl"
    args = ["mine", "--model", str(tiny_model_dir), "--input", str(train_file), "--out", str(out), "-k", "2"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text().splitlines()[0])["negatives"][0] == {"text": "given negative"}
    assert "kept 1 curated negative(s) of 1 record(s)" in r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["existing_kept"] == 1 and summary["out"] == str(out.resolve())
    r = CliRunner().invoke(app, [*args, "--replace-existing"])
    assert r.exit_code == 0, r.output
    assert "replaced 1 curated negative(s) in 1 record(s)" in r.stderr
    assert {"text": "given negative"} not in json.loads(out.read_text().splitlines()[0])["negatives"]
