"""UniME: hard-negative mining with the false-negative filter, similarity distillation, judge soft targets,
the teacher cache, and two processes with gathered candidates equal to one process on the concatenated batch.

Run as a script (``python tests/test_unime.py RANK PORT OUT``) this file is the worker of the 2-process test.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from vlmbed.objectives import distill, hardneg, judge

# ----------------------------------------------------------------------------- hard negatives + filter


def _unit(rows) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_filtered_false_negatives_never_enter_the_denominator():
    # one query; candidate 0 is its positive, 1 is far above cos(q, pos) + beta (a false negative)
    q = _unit([[1.0, 0.0, 0.0]])
    cands = _unit([[0.6, 0.8, 0.0], [0.99, 0.1, 0.0], [0.3, 0.0, 0.95], [0.0, 0.5, 0.5], [0.1, -0.9, 0.2]])
    sims = q @ cands.T
    index, has, filtered = hardneg.hard_negative_indices(sims, torch.tensor([0]), k=3, beta=0.1)
    assert filtered[0].tolist() == [False, True, False, False, False] and bool(has[0])
    assert 1 not in index[0].tolist() and 0 not in index[0].tolist()
    assert index[0].tolist() == [2, 4, 3]  # the three valid ones, hardest first (cos .30, .11, 0)
    # the loss is the InfoNCE over {positive} + those three, whatever the filtered candidate is
    tau = 0.02
    s = sims[0]
    expected = -(s[0] / tau - torch.logsumexp(torch.stack([s[0], s[2], s[3], s[4]]) / tau, 0))
    c = cands.clone().requires_grad_(True)
    out = hardneg.loss(q, c, torch.tensor([0]), k=3, beta=0.1, temperature=tau)["hardneg_infonce"]
    assert torch.allclose(out, expected, atol=1e-5)
    out.backward()
    assert float(c.grad[1].abs().max()) == 0.0  # no gradient reaches the filtered candidate
    # without the filter the false negative is the hardest negative
    index, _, _ = hardneg.hard_negative_indices(sims, torch.tensor([0]), k=3, beta=None)
    assert index[0].tolist()[0] == 1


def test_fewer_than_k_valid_negatives_duplicates_valid_ones_never_the_positive():
    torch.manual_seed(0)
    q = F.normalize(torch.randn(4, 8), dim=-1)
    cands = F.normalize(torch.randn(5, 8), dim=-1)
    sims = q @ cands.T
    pos = torch.tensor([0, 1, 2, 3])
    excluded = torch.zeros(4, 5, dtype=torch.bool)
    excluded[1, :] = True  # query 1: no valid candidate at all
    excluded[2, [0, 1, 3]] = True  # query 2: only candidate 4 is valid
    index, has, filtered = hardneg.hard_negative_indices(sims, pos, k=8, beta=0.1, excluded=excluded)
    assert index.shape == (4, 8) and has.tolist() == [True, False, True, True]
    for i in (0, 2, 3):
        chosen = set(index[i].tolist())
        assert pos[i].item() not in chosen and not (filtered[i] & excluded.new_zeros(5).index_fill(
            0, torch.tensor(sorted(chosen)), True)).any()
        assert not excluded[i, index[i]].any()
    assert index[2].tolist() == [4] * 8
    valid0 = [j for j in sims[0].argsort(descending=True).tolist() if j != 0 and not filtered[0, j]]
    assert index[0].tolist() == [valid0[j % len(valid0)] for j in range(8)]  # repeated in rank order
    out = hardneg.loss(q, cands, pos, k=8, beta=0.1, excluded=excluded)["hardneg_infonce"]
    assert torch.isfinite(out)
    # query 1 (no valid negative) contributes a loss of zero: the mean over the others, times 3/4
    rows = hardneg.loss(q[[0, 2, 3]], cands, pos[[0, 2, 3]], k=8, beta=0.1, excluded=excluded[[0, 2, 3]])
    assert torch.allclose(out, rows["hardneg_infonce"] * 3 / 4, atol=1e-5)


def test_released_filter_threshold_is_strict():
    """METHODS.md oracle: beta = 0.1 removes exactly the candidates with s_ij > s_ii + 0.1."""
    sims = torch.tensor([[0.5, 0.6, 0.61, 0.59, 0.2]])
    _, _, filtered = hardneg.hard_negative_indices(sims, torch.tensor([0]), k=2, beta=0.1)
    assert filtered[0].tolist() == [False, False, True, False, False]


# ----------------------------------------------------------------------------- distillation, judge


def test_kd_loss_golden_values():
    e = math.e
    sq, sd = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    tq, td = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 2.0, 0.0], [3.0, 0.0, 0.0]])  # other dim, scale
    golden = (e - 1) / (e + 1)  # P_s = (e, 1)/(e+1), P_t = (1, e)/(e+1): both KLs are (e-1)/(e+1)
    for direction in distill.DIRECTIONS:
        out = distill.kd_loss(sq, sd, tq, td, temperature=1.0, direction=direction)
        assert abs(float(out) - golden) < 1e-6, direction
    # asymmetric case: teacher uniform; KL(P_t||P_s) and KL(P_s||P_t) differ
    td_flat = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    ps = torch.tensor([e, 1.0]) / (e + 1)
    ts = float((0.5 * (torch.log(torch.tensor(0.5)) - torch.log(ps))).sum())
    st = float((ps * (torch.log(ps) - math.log(0.5))).sum())
    assert abs(float(distill.kd_loss(sq, sd, tq, td_flat, 1.0)) - ts) < 1e-6
    assert abs(float(distill.kd_loss(sq, sd, tq, td_flat, 1.0, direction="student_teacher")) - st) < 1e-6
    assert abs(float(distill.kd_loss(sq, sd, tq, td_flat, 1.0, direction="symmetric")) - (ts + st) / 2) < 1e-6
    # the teacher temperature is its own switch: a very cold teacher is one-hot on its best column
    cold = distill.kd_loss(sq, sd, tq, td, temperature=1.0, teacher_temperature=1e-3)
    assert abs(float(cold) - math.log((e + 1) / 1)) < 1e-4  # -log P_s(column 1) = log((e + 1) / 1)


def test_judge_symmetric_kl_golden_value_and_own_candidates():
    # P = (0.5, 0.5), Q = (0.75, 0.25): 0.5 * (KL(Q||P) + KL(P||Q))
    kl_qp = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    kl_pq = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(2.0)
    out = judge.symmetric_kl(torch.zeros(1, 2), torch.tensor([[math.log(3.0), 0.0]]))
    assert abs(float(out) - 0.5 * (kl_qp + kl_pq)) < 1e-6
    q = torch.eye(3)[:2]
    pos, negs = torch.eye(3)[[1, 2]], torch.arange(12.0).view(4, 3)
    owner = torch.tensor([1, 0, 1, 0])  # interleaved owners: each query's own negatives, in order
    cands = judge.own_candidates(q, pos, negs, owner, offset=0, k=2)
    assert torch.equal(cands[0], torch.stack([pos[0], negs[1], negs[3]]))
    assert torch.equal(cands[1], torch.stack([pos[1], negs[0], negs[2]]))
    with pytest.raises(ValueError, match="num_negatives=3"):
        judge.own_candidates(q, pos, negs, owner, offset=0, k=3)


# ----------------------------------------------------------------------------- teacher cache


def test_teacher_cache_round_trip_missing_key_and_cli(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from vlmbed.cli import _register, app
    from vlmbed.models.embedder import Embedder
    from vlmbed.train.teacher import MissingTeacherVector, TeacherCache, content_key, embed_texts

    out = tmp_path / "cache"
    first = embed_texts(tiny_model_dir, ["a red three", "a blue five", "a red three"], out)
    assert first["added"] == 2 and first["total"] == 2 and first["kind"] == "vlmbed"
    data = tmp_path / "texts.jsonl"
    data.write_text(json.dumps({"text": "a blue five"}) + "\n" + json.dumps("a green one") + "\n"
                    + json.dumps({"query": "a white two", "positive": "two in white", "negatives": ["a red six"]})
                    + "\n")
    _register()
    res = CliRunner().invoke(app, ["teacher", "embed", "--teacher", str(tiny_model_dir), "--data", str(data),
                                   "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["added"] == 4 and summary["total"] == 6  # only the new texts
    cache = TeacherCache.load(out)
    texts = ["a red three", "a green one", "two in white", "a red six"]
    expected = Embedder.from_pretrained(tiny_model_dir, dtype=torch.float32).encode(texts, role="query")
    assert torch.allclose(cache.lookup(texts), torch.from_numpy(expected), atol=1e-5)
    assert json.loads((out / "keys.json").read_text())[0] == content_key("a red three")
    with pytest.raises(MissingTeacherVector) as err:
        cache.lookup(["a red three", "a purple nine"], "query")
    assert "a purple nine" in str(err.value) and "vlmbed teacher embed" in str(err.value)
    with pytest.raises(ValueError, match="other settings"):
        embed_texts(tiny_model_dir, ["x"], out, instruction="Represent: ")
    res = CliRunner().invoke(app, ["teacher", "embed", "--teacher", str(tmp_path / "nope"), "--data", str(data),
                                   "--out", str(out)])
    assert res.exit_code == 2 and "teacher folder not found" in res.output


# ----------------------------------------------------------------------------- GradCache = full batch


def test_hard_negative_training_is_the_same_with_and_without_gradcache(tiny_model_dir, tmp_path):
    """Online mining inside GradCache: the second step's loss (after one update) equals the full batch's."""
    from vlmbed.config import build_recipe
    from vlmbed.train.stages import run_recipe

    rows = {}
    for chunk in (None, 3):
        recipe = build_recipe({"name": "hn", "output_dir": str(tmp_path / f"c{chunk}"), "stages": [{
            "name": "hn", "model": {"path": str(tiny_model_dir), "dtype": "float32"},
            "data": {"sources": [{"format": "digits", "tasks": ["digits_t2i"], "max_examples": 32}],
                     "batch_size": 8, "num_negatives": 1},
            "objectives": [{"name": "hardneg_infonce", "k": 3, "beta": 0.1, "temperature": 0.05}],
            "train": {"lr": 1e-3, "max_steps": 2, "progress": False, "log_every": 1, "mixed_precision": "no",
                      "gradcache_chunk": chunk},
            "eval": {"suite": "none"}}]})
        (run,) = run_recipe(recipe)
        rows[chunk] = [json.loads(line)["hardneg_infonce"] for line in
                       (run.stage_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows[None]) == 2 and rows[None] == pytest.approx(rows[3], rel=1e-4, abs=1e-6)


# ----------------------------------------------------------------------------- 2 processes = 1 process

B, N_NEG, D, D_T, K = 3, 2, 6, 5, 2  # per process: queries, hard negatives per query, dims, judge negatives


def _objectives():
    from vlmbed.config import build_recipe

    stage = {"name": "s", "objectives": [
        {"name": "hardneg_infonce", "k": 4, "beta": 0.1, "temperature": 0.1},
        {"name": "similarity_kd", "teacher": "unused", "weight": 0.5, "temperature": 0.2},
        {"name": "judge_kl", "weight": 0.3, "temperature": 0.5}]}
    return build_recipe({"stages": [stage]}).stages[0].objectives


def _data(rank: int | None):
    """Embeddings (leaves) and batch fields of process ``rank`` (None: both processes concatenated)."""
    if rank is None:
        parts = [_data(r) for r in (0, 1)]
        reps = {k: torch.cat([p[0][k] for p in parts]).detach().requires_grad_(True) for k in parts[0][0]}
        batch = {k: torch.cat([p[1][k] + (B if k == "negative_owner" and i else 0) for i, p in enumerate(parts)])
                 for k in parts[0][1]}
        return reps, batch
    g = torch.Generator().manual_seed(100 + rank)
    reps = {"query": F.normalize(torch.randn(B, D, generator=g), dim=-1),
            "positive": F.normalize(torch.randn(B, D, generator=g), dim=-1),
            "negatives": F.normalize(torch.randn(B * N_NEG, D, generator=g), dim=-1)}
    reps["positive"][0] = reps["query"][0] * 0.9 + 0.1 * reps["positive"][0]  # a close pair
    reps = {k: v.detach().requires_grad_(True) for k, v in reps.items()}
    groups = torch.tensor([7, 8 + rank, 7])  # an equal group on each process (and across processes)
    batch = {"group_ids": groups, "positive_keys": torch.arange(B) + 10 * rank,
             "negative_keys": torch.arange(B * N_NEG) + 100 + 10 * rank,
             "negative_owner": torch.arange(B).repeat_interleave(N_NEG),
             "teacher_query": torch.randn(B, D_T, generator=g), "teacher_positive": torch.randn(B, D_T, generator=g),
             "teacher_negatives": torch.randn(B * N_NEG, D_T, generator=g),
             "judge_scores": torch.rand(B, 1 + N_NEG, generator=g)}
    return reps, batch


def _step(rank: int | None):
    from vlmbed.train.losses import contrastive_loss

    reps, batch = _data(rank)
    parts = contrastive_loss(reps, batch, _objectives())
    parts["loss"].backward()
    return {k: float(v.detach()) for k, v in parts.items()}, {k: v.grad.clone() for k, v in reps.items()}


def _worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as tdist

    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    parts, grads = _step(rank)
    torch.save({"parts": parts, "grads": grads}, f"{out}.{rank}")
    tdist.barrier()
    tdist.destroy_process_group()


@pytest.mark.timeout(120)
def test_two_processes_equal_one_process_on_the_concatenated_batch(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "g")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, __file__, str(r), str(port), out], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(2)]
    logs = [p.communicate(timeout=110)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    one_parts, one_grads = _step(None)
    two = [torch.load(f"{out}.{r}") for r in range(2)]
    for name, value in one_parts.items():  # DDP averages: the mean over processes is the global value
        assert abs((two[0]["parts"][name] + two[1]["parts"][name]) / 2 - value) < 1e-5, name
    for role, grad in one_grads.items():  # every process's local rows get the gradient (x W, DDP's average)
        rows = grad.shape[0] // 2
        for r in (0, 1):
            local = two[r]["grads"][role] / 2
            assert torch.allclose(local, grad[r * rows : (r + 1) * rows], atol=1e-6), (role, r)
            assert float(local.abs().sum()) > 0, (role, r)


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
