"""The supervised memory diagnostics (`run.py diag`): task generators, the chunked trainer, the CLI.

The generator tests live here with the trainer that uses them (envs/sequence_tasks.py has no
other user). The slow test is the headline result: copy with a 200-step delay is learned by
exact RTRL and not by TBPTT truncated at 10 steps, at the same budget and seed.
"""

from __future__ import annotations

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import run
from agent.cores.elstm import RECURRENT
from envs.sequence_tasks import AnBnTask, CopyTask, HaystackTask, make_task
from tests.conftest import run_cli
from train.diag import DiagConfig, DiagModel, accumulate_gradients, run_diag
from common.errors import UserError


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _check_layout(task, batch, B):
    L, D = task.seq_len, task.input_size
    assert batch.inputs.shape == (L, B, D) and batch.inputs.dtype == torch.float32
    assert batch.targets.shape == (L, B) and batch.targets.dtype == torch.int64
    assert batch.mask.shape == (L, B) and batch.mask.dtype == torch.bool
    assert int(batch.targets.min()) >= 0 and int(batch.targets.max()) < task.num_classes
    assert (batch.targets[~batch.mask] == 0).all()


# Generators -------------------------------------------------------------------------------------


def test_copy_scores_the_cue_and_the_steps_after_it_and_the_answers_are_the_first_symbols():
    task = CopyTask(symbols=5, length=3, delay=7)
    batch = task.sample(64, _gen())
    _check_layout(task, batch, 64)
    tokens = batch.inputs.argmax(-1)
    assert (batch.inputs.sum(-1) == 1).all()  # one-hot
    cue = 3 + 7
    assert (tokens[cue] == task.cue).all() and (tokens[3:cue] == task.blank).all()
    assert batch.mask[cue:cue + 3].all() and batch.mask.sum() == 3 * 64
    assert torch.equal(batch.targets[cue:cue + 3], tokens[:3])  # the answer is in the inputs, in order


def test_anbn_target_is_whether_the_counts_of_a_and_b_match_and_the_classes_are_balanced():
    task = AnBnTask(length=6, delay=4)
    batch = task.sample(4000, _gen())
    _check_layout(task, batch, 4000)
    tokens = batch.inputs.argmax(-1)
    n, m = (tokens == task.A).sum(0), (tokens == task.B_).sum(0)
    assert (n >= 1).all() and (n <= 6).all() and (m >= 1).all()
    assert batch.mask[-1].all() and batch.mask.sum() == 4000 and (tokens[-1] == task.QUERY).all()
    assert torch.equal(batch.targets[-1], (n == m).long())
    # The string is a+ b+ then blanks: every a comes before every b.
    last_a = torch.where(tokens == task.A, torch.arange(task.seq_len)[:, None], -1).max(0).values
    first_b = torch.where(tokens == task.B_, torch.arange(task.seq_len)[:, None], 10**6).min(0).values
    assert (last_a + 1 == first_b).all()
    assert abs(batch.targets[-1].float().mean().item() - task.chance) < 0.03
    assert ((n - m).abs() <= 2).all()  # negatives are near misses


def test_haystack_answer_is_the_value_shown_with_the_query_key():
    task = HaystackTask(symbols=6, length=4, delay=20)
    batch = task.sample(256, _gen())
    _check_layout(task, batch, 256)
    K, x = 6, batch.inputs
    query = x[-1, :, :K].argmax(-1)
    assert (x[-1, :, 2 * K] == 1).all() and (x[:-1, :, 2 * K] == 0).all()
    has_key = x[:-1, :, :K].sum(-1) == 1
    assert (has_key.sum(0) == 4).all()  # exactly `length` pairs, every other step a lone value
    assert (x[:-1, :, K:2 * K].sum(-1) == 1).all()
    for b in range(256):
        step = torch.nonzero(has_key[:, b] & (x[:-1, b, :K].argmax(-1) == query[b])).flatten()
        assert len(step) == 1  # keys are distinct
        assert batch.targets[-1, b] == x[step[0], b, K:2 * K].argmax()
    assert batch.mask[-1].all() and batch.mask.sum() == 256


@pytest.mark.parametrize("name", ["copy", "anbn", "haystack"])
def test_same_seed_same_batch_other_seed_other_batch(name):
    task = make_task(name, length=2, delay=3)
    a, b, c = task.sample(16, _gen(7)), task.sample(16, _gen(7)), task.sample(16, _gen(8))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets) and torch.equal(a.mask, b.mask)
    assert not torch.equal(a.inputs, c.inputs)


@pytest.mark.parametrize("name,chance", [("copy", 1 / 8), ("anbn", 1 / 2), ("haystack", 1 / 8)])
def test_chance_is_the_best_input_blind_accuracy(name, chance):
    task = make_task(name, delay=2)
    assert task.chance == pytest.approx(chance)
    batch = task.sample(8000, _gen())
    scored = batch.targets[batch.mask]
    best_constant = torch.bincount(scored, minlength=task.num_classes).max().item() / scored.numel()
    assert best_constant == pytest.approx(chance, abs=0.03)


@pytest.mark.parametrize("kwargs", [dict(name="copy", length=0), dict(name="copy", delay=-1),
                                    dict(name="copy", symbols=1), dict(name="haystack", symbols=4, length=5),
                                    dict(name="anbn", symbols=4), dict(name="parity")])
def test_impossible_task_sizes_are_user_errors(kwargs):
    with pytest.raises(UserError):
        make_task(**kwargs)


# Trainer ----------------------------------------------------------------------------------------


def test_rtrl_gradient_is_exact_whatever_the_segment_length_and_equals_full_bptt():
    """Chunked RTRL (segments of 3) gives the recurrent parameters the untruncated BPTT gradient."""
    task = CopyTask(symbols=4, length=2, delay=9)
    batch = task.sample(5, _gen())
    batch = type(batch)(batch.inputs.double(), batch.targets, batch.mask)

    def grads(learning, chunk):
        torch.manual_seed(0)
        model = DiagModel(task.input_size, 6, task.num_classes, learning, chrono_max=task.seq_len).double()
        loss, _ = accumulate_gradients(model, batch, learning, chunk)
        return loss, {n: p.grad.clone() for n, p in model.named_parameters()}

    loss_full, full = grads("tbptt", 100)  # one chunk: plain BPTT through the whole sequence
    loss_rtrl, rtrl = grads("rtrl", 3)
    loss_trunc, trunc = grads("tbptt", 3)
    assert loss_rtrl == pytest.approx(loss_full, rel=1e-12) and loss_trunc == pytest.approx(loss_full, rel=1e-12)
    for name in [f"core.{k}" for k in RECURRENT] + ["core.out.weight", "readout.weight", "readout.bias"]:
        torch.testing.assert_close(rtrl[name], full[name], rtol=1e-9, atol=1e-12)
    # Truncation does change it (so the comparison above is not vacuous).
    assert not torch.allclose(trunc["core.Z"], full["core.Z"], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("learning", ["rtrl", "tbptt"])
def test_short_copy_is_learned_by_both_methods(learning):
    cfg = DiagConfig(task="copy", learning=learning, delay=5, steps=200, eval_sequences=256, log_every=0)
    res = run_diag(cfg, log=lambda line: None)
    assert res["final_train_loss"] < 0.5 * torch.log(torch.tensor(8.0)).item()
    assert res["accuracy"] > 0.5 > res["chance"]
    assert res["steps"] == 200 and res["wall_time_s"] > 0 and res["peak_rss_mib"] > 0


def test_tensorboard_gets_loss_accuracy_and_rtrl_telemetry(tmp_path):
    run_diag(DiagConfig(task="copy", delay=30, steps=3, eval_sequences=32, log_every=0, tb=str(tmp_path)),
             log=lambda line: None)
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"diag/loss", "diag/accuracy", "diag/eval_accuracy", "rtrl/max_abs_J", "rtrl/frac_J_gt_1",
            "rtrl/max_abs_S"} <= tags
    assert [e.step for e in acc.Scalars("diag/loss")] == [1, 2, 3]


# CLI --------------------------------------------------------------------------------------------


def test_cli_json_prints_one_json_line_of_results():
    proc = run_cli("diag", "copy", "--steps", "5", "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    res = json.loads(lines[0])
    assert res["task"] == "copy" and res["learning"] == "rtrl" and res["steps"] == 5 and res["delay"] == 200
    assert 0.0 <= res["accuracy"] <= 1.0 and res["chance"] == pytest.approx(1 / 8)
    assert {"wall_time_s", "peak_rss_mib", "seed", "eval_seed"} <= set(res)


def test_cli_bad_input_is_one_line_and_exit_2():
    proc = run_cli("diag", "copy", "--learning", "rtrl", "--unroll", "10", timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "--unroll" in proc.stderr


@pytest.mark.parametrize("args,needle", [
    (["parity"], "parity"),
    (["copy", "--steps", "0"], "--steps"),
    (["copy", "--hidden-size", "-4"], "--hidden-size"),
    (["copy", "--batch-size", "0"], "--batch-size"),
    (["copy", "--unroll", "0", "--learning", "tbptt"], "--unroll"),
    (["copy", "--learning", "lstm"], "--learning"),
    (["copy", "--lr", "0"], "--lr"),
    (["copy", "--delay", "-1"], "--delay"),
    (["copy", "--steps", "many"], "--steps"),
    (["haystack", "--symbols", "3", "--length", "4"], "--length"),
])
def test_bad_diag_input_is_refused_in_one_line(capsys, args, needle):
    try:
        code = run.main(["diag", *args])
    except SystemExit as e:  # argparse's own errors (a non-number) exit from the parser
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and needle in err, err


# The headline result ----------------------------------------------------------------------------


@pytest.mark.slow
def test_copy_across_200_steps_is_learned_by_rtrl_and_not_by_tbptt_10():
    """Same model, seed, batches and budget (1500 steps of 32 sequences): only the gradient differs."""
    common = dict(task="copy", delay=200, steps=1500, seed=0, log_every=0)
    rtrl = run_diag(DiagConfig(learning="rtrl", **common), log=lambda line: None)
    tbptt = run_diag(DiagConfig(learning="tbptt", unroll=10, **common), log=lambda line: None)
    assert rtrl["accuracy"] > 0.95
    assert tbptt["accuracy"] < 0.25  # chance is 1/8
