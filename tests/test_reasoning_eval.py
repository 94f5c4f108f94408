"""Scoring the reasoning tasks: the one-loop depth sweep equals model(x, num_steps=T) at every T, exact
match is counted right, adaptive exits give each problem the logits of its own depth, and a training run
on the tasks works end to end."""

from __future__ import annotations

import json

import pytest
import torch

import parcae_lm
from parcae_lm.cli import main
from parcae_lm.config.train import ReasoningTask, RunConfig, TrainArgs
from parcae_lm.data.reasoning import held_out_problems, reasoning_tokenizer, sample_problems
from parcae_lm.errors import EvalError
from parcae_lm.eval.reasoning import (
    Cell,
    Exit,
    ExitRule,
    Readout,
    ReasoningValidator,
    adaptive_readout,
    evaluate,
    evaluate_adaptive,
    problem_batches,
    readouts,
    summarise,
)
from parcae_lm.train import train

TOK = reasoning_tokenizer()


@pytest.fixture(scope="module")
def parcae():
    torch.manual_seed(0)
    return parcae_lm.create_model("parcae-micro", vocab_size=259, init_strategy="scaled").eval()


@pytest.fixture(scope="module")
def batches():
    probs = held_out_problems(["chase", "add", "swaps"], 3, {t: [2, 5] for t in ReasoningTask})
    return problem_batches(probs, TOK, 4)


def test_batches_group_equal_length_problems_of_one_task_and_difficulty(batches):
    assert [(b.task.value, b.difficulty, b.x.shape[0]) for b in batches[:4]] == [
        ("chase", 2, 3),
        ("chase", 5, 3),
        ("add", 2, 3),
        ("add", 5, 3),
    ]
    for b in batches:
        # the answer starts right after the prompt; the targets are the answer and EOS
        assert (b.x[:, b.start + 1 :] == b.targets[:, :-1]).all() and (b.targets[:, -1] == TOK.eos_id).all()
    assert (
        problem_batches(held_out_problems(["add"], 5, {ReasoningTask.add: [3]}), TOK, 2)[-1].x.shape[0] == 1
    )


@torch.no_grad()
def test_one_loop_depth_sweep_equals_a_forward_at_each_depth(parcae, batches):
    for b in batches:
        outs = list(readouts(parcae, b, [3, 1, 6]))
        assert [o.depth for o in outs] == [1, 3, 6]
        for o in outs:
            span = slice(b.start, b.start + b.targets.shape[1])
            want = parcae(b.x, num_steps=o.depth)["logits"][:, span, : TOK.vocab_size]
            assert (o.logits - want).abs().max() < 1e-5
            assert o.state_norm > 0 and o.residual > 0 and o.rel_residual > 0
        # a shrinking relative residual: the loop settles (ρ(Ā) < 1 at init)
        assert outs[-1].rel_residual < outs[0].rel_residual


@torch.no_grad()
def test_gpt_is_scored_once_at_its_own_depth(batches):
    torch.manual_seed(0)
    gpt = parcae_lm.create_model("gpt-micro", vocab_size=259).eval()
    (out,) = list(readouts(gpt, batches[0], [None]))
    assert out.depth is None and out.state_norm is None
    with pytest.raises(EvalError, match="only apply to looped"):
        list(readouts(gpt, batches[0], [2]))


def test_exact_match_needs_every_answer_token():
    targets = torch.tensor([[5, 6, 1], [5, 6, 1], [7, 8, 1]])  # two answer tokens + EOS
    logits = torch.full((3, 3, 10), -5.0)
    for row, picks in enumerate([[5, 6, 1], [5, 9, 1], [7, 8, 4]]):  # right, wrong second, right (bad EOS)
        for pos, tok in enumerate(picks):
            logits[row, pos, tok] = 5.0
    cell = Cell("add", 2, True, 4)
    cell.add(Readout(4, logits, 2.0, 1.0, 0.5), targets)
    assert (cell.problems, cell.correct) == (3, 2)
    assert cell.tokens == 9 and cell.loss == pytest.approx(cell.nats / 9)
    cell.add(Readout(4, logits, 4.0, 1.0, 0.5), targets)  # the state norm is a mean over problems
    assert cell.state_norm == pytest.approx(3.0) and cell.accuracy == pytest.approx(4 / 6)


def test_evaluate_and_summarise_report_every_cell_and_the_trained_and_beyond_means(parcae):
    probs = held_out_problems(["add", "swaps"], 4, {ReasoningTask.add: [1, 5], ReasoningTask.swaps: [3, 8]})
    cells = evaluate(parcae, probs, TOK, [1, 2], batch_size=3)
    assert {(c.task, c.difficulty, c.depth) for c in cells} == {
        (t, d, T) for t, ds in (("add", [1, 5]), ("swaps", [3, 8])) for d in ds for T in (1, 2)
    }
    assert all(c.problems == 4 for c in cells)
    assert {c.difficulty for c in cells if c.trained} == {1, 3}
    s = summarise(cells)
    at2 = [c for c in cells if c.depth == 2]
    assert s["acc_d2"] == pytest.approx(sum(c.accuracy for c in at2 if c.trained) / 2)
    assert s["acc_beyond_d2"] == pytest.approx(sum(c.accuracy for c in at2 if not c.trained) / 2)
    assert s["acc_add_d2"] == pytest.approx(next(c.accuracy for c in at2 if c.task == "add" and c.trained))
    assert s["bpb_d1"] == pytest.approx(s["loss_d1"] / 0.6931471805599453)


@torch.no_grad()
def test_adaptive_exits_give_each_problem_the_logits_of_its_own_depth(parcae, batches):
    b = batches[2]  # add, 2 digits: three answer tokens
    span = slice(b.start, b.start + b.targets.shape[1])
    fixed, depth = adaptive_readout(parcae, b, Exit(ExitRule.fixed, max_steps=5))
    assert depth.tolist() == [5, 5, 5]
    assert (fixed.logits - parcae(b.x, num_steps=5)["logits"][:, span, : TOK.vocab_size]).abs().max() < 1e-5
    for rule, tau in [(ExitRule.state, 0.2), (ExitRule.kl, 1e-2), (ExitRule.confidence, 0.02)]:
        out, depth = adaptive_readout(parcae, b, Exit(rule, tau, max_steps=6))
        assert int(depth.min()) >= 1 and int(depth.max()) <= 6
        for row in range(b.x.shape[0]):
            want = parcae(b.x[row : row + 1], num_steps=int(depth[row]))["logits"][0, span, : TOK.vocab_size]
            got = out.logits[row]
            if rule != ExitRule.state:  # the probing rules return their probes' log-probabilities
                want = want.log_softmax(-1)
            assert (got - want).abs().max() < 1e-4, (rule, row)


@torch.no_grad()
def test_thresholds_at_the_extremes_never_or_always_exit_early(parcae, batches):
    b = batches[0]
    for rule in (ExitRule.state, ExitRule.kl):  # a change below 0 never happens
        assert adaptive_readout(parcae, b, Exit(rule, 0.0, max_steps=4))[1].tolist() == [4, 4, 4]
    assert adaptive_readout(parcae, b, Exit(ExitRule.confidence, 0.0, 4, min_steps=2))[1].tolist() == [
        2,
        2,
        2,
    ]
    # the KL rule compares two probes, so it cannot stop before the second iteration
    assert adaptive_readout(parcae, b, Exit(ExitRule.kl, 1e9, max_steps=4))[1].tolist() == [2, 2, 2]


def test_evaluate_adaptive_counts_iterations_and_matches_fixed_depth_accuracy(parcae):
    probs = held_out_problems(["swaps"], 6, {ReasoningTask.swaps: [2, 9]})
    cells = evaluate_adaptive(
        parcae, probs, TOK, [Exit(ExitRule.fixed, max_steps=3), Exit(ExitRule.state, 0.5, 3)], 4
    )
    fixed = [c for c in cells if c.rule == "fixed"]
    assert [(c.difficulty, c.problems, c.mean_iterations) for c in fixed] == [(2, 6, 3.0), (9, 6, 3.0)]
    ref = {c.difficulty: c.accuracy for c in evaluate(parcae, probs, TOK, [3], 4)}
    assert {c.difficulty: c.accuracy for c in fixed} == ref
    assert all(1 <= c.mean_iterations <= 3 for c in cells)
    # fixed exits of different depths are different cells
    two = evaluate_adaptive(parcae, probs, TOK, [Exit(ExitRule.fixed, max_steps=d) for d in (1, 2)], 4)
    assert sorted((c.max_steps, c.mean_iterations) for c in two if c.difficulty == 2) == [(1, 1.0), (2, 2.0)]


def test_exit_settings_are_checked():
    with pytest.raises(EvalError, match="probability"):
        Exit(ExitRule.confidence, 1.5)
    with pytest.raises(EvalError, match="min_steps <= max_steps"):
        Exit(ExitRule.state, 0.1, max_steps=2, min_steps=3)
    with pytest.raises(EvalError, match=">= 0"):
        Exit(ExitRule.kl, -1.0)
    with pytest.raises(EvalError, match="one of fixed, state"):
        Exit("state", 0.1)
    with pytest.raises(EvalError, match="looped"):
        adaptive_readout(parcae_lm.create_model("gpt-micro", vocab_size=259), None, Exit(ExitRule.fixed))


def test_validator_subsets_evenly_across_cells(parcae):
    v = ReasoningValidator([ReasoningTask.add], TOK, batch_size=8, per_difficulty=5)
    sub = v._subset(2)  # 2 batches x 8 problems over 8 difficulties: two of each
    assert [e.difficulty for e in sub] == [d for d in range(1, 9) for _ in range(2)]
    metrics = v(parcae, [1, 3], max_batches=None)
    assert {"loss_d3", "bpb_d3", "acc_d3", "acc_beyond_d3", "acc_add_d3"} <= set(metrics)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A few training steps on all three tasks (a micro Parcae)."""
    base = {
        "out_dir": str(tmp_path_factory.mktemp("reasoning-runs")),
        "run_name": "r",
        "model_name": "parcae-micro",
        "data.tasks": ["chase", "add", "swaps"],
        "data.seq_len": 64,
        "train.micro_batch_size": 4,
        "train.global_batch_size": 8,
        "train.max_steps": 3,
        "log.interval": 1,
        "eval.interval": 2,
        "eval.batches": 1,
        "eval.depths": [1],
        "eval.final_depths": [2],
        "eval.batch_size": 64,
        "log.progress": False,
        "system.threads": 1,
    }
    cfg = RunConfig(train=TrainArgs(max_steps=1)).replace(base)
    return cfg, train(cfg)


def test_training_on_reasoning_tasks_end_to_end(trained):
    """Answer-only loss, accuracy in the metrics and the summary, greedy samples of held-out problems."""
    cfg, result = trained
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert {"acc_d3", "acc_beyond_d3", "acc_chase_d3", "loss_d2"} <= set(summary["val"])
    assert summary["val_loss"] == summary["val"]["loss_d3"]
    assert [s["prompt"] for s in summary["samples"]] == [p.prompt for p in sample_problems(cfg.data.tasks)]
    assert all(s["text"].startswith(s["prompt"]) for s in summary["samples"])
    run = parcae_lm.load_run(result.run_dir)
    assert run.tokenizer.fingerprint() == TOK.fingerprint() and run.model.config.vocab_size == 259
    vals = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "val" and not r.get("final") and "acc_d1" in r for r in vals)


def test_eval_reasoning_command_writes_accuracy_by_difficulty_and_depth(trained, tmp_path, capsys):
    _, result = trained
    argv = ["eval", "reasoning", str(result.run_dir), "--per_difficulty", "3", "--recurrence", "[1,2]"]
    assert main([*argv, "--tasks", "[add]", "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "reasoning.json").read_text())
    assert payload["tasks"] == ["add"] and {r["depth"] for r in payload["results"]} == {1, 2}
    assert {r["difficulty"] for r in payload["results"]} == set(range(1, 9))
    assert (tmp_path / "reasoning.png").is_file() and "| add | 8 | False |" in capsys.readouterr().out
    # the default tasks are the run's
    assert main([*argv[:3], "--per_difficulty", "2", "--out", str(tmp_path / "all")]) == 0
    assert json.loads((tmp_path / "all" / "reasoning.json").read_text())["tasks"] == ["chase", "add", "swaps"]


def test_eval_reasoning_adaptive_and_its_usage_errors(trained, tmp_path, capsys):
    _, result = trained
    argv = ["eval", "reasoning", str(result.run_dir), "--tasks", "[swaps]", "--per_difficulty", "2"]
    out = ["--out", str(tmp_path)]
    assert main([*argv, "--criterion", "state", "--thresholds", "[0.1]", "--max_steps", "4", *out]) == 0
    rows = json.loads((tmp_path / "reasoning-adaptive.json").read_text())["results"]
    assert {(r["rule"], r["threshold"]) for r in rows} == {("fixed", 0.0), ("state", 0.1)}
    assert all(r["mean_iterations"] == 4 for r in rows if r["rule"] == "fixed")
    capsys.readouterr()
    assert main([*argv, "--criterion", "kl", *out]) == 2
    assert "--criterion and --thresholds go together" in capsys.readouterr().err
    assert main([*argv, "--criterion", "kl", "--thresholds", "[0.1]", "--recurrence", "[2]", *out]) == 2
    assert main([*argv, "--criterion", "confidence", "--thresholds", "[2.0]", *out]) == 1
    assert "probability" in capsys.readouterr().err


def test_parcae_train_takes_reasoning_tasks_on_the_command_line(tmp_path):
    argv = ["train", "--config", "tiny", "--model_name", "parcae-micro", "--data.tasks", "[swaps]"]
    argv += ["--data.seq_len", "48", "--train.max_steps", "2", "--train.micro_batch_size", "4"]
    argv += ["--train.global_batch_size", "4", "--eval.batch_size", "64", "--eval.final_depths", "[1]"]
    argv += [
        "--out_dir",
        str(tmp_path),
        "--run_name",
        "cli",
        "--log.progress",
        "false",
        "--system.threads",
        "1",
    ]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert "acc_swaps_d1" in summary["val"] and summary["steps"] == 2
