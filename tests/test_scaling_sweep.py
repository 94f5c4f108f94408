"""`parcae sweep`: grid expansion, smoke variants, FLOP -> step budgets, resumability, emitted commands,
the results table feeding `parcae fit`, divergence bookkeeping.

Runs train micro models on a synthetic corpus built here (seconds)."""

from __future__ import annotations

import csv
import json
import math
import shlex
from pathlib import Path

import pytest

from parcae_lm.cli import main as cli_main
from parcae_lm.config.train import load_run_config
from parcae_lm.errors import ConfigError, TrainingError
from parcae_lm.model.flops import flops_per_token
from parcae_lm.scaling import runner
from parcae_lm.scaling import table as F
from parcae_lm.scaling.collect import spike_stats
from parcae_lm.scaling.emit import Emit, emit_commands
from parcae_lm.scaling.runner import run_sweep
from parcae_lm.scaling.sweep import DIVERGED, SUMMARY, SweepSpec, expand
from parcae_lm.train.budget import max_steps
from verse import verse_shards


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sweep-data")
    paths = verse_shards(root, train_docs=16, val_lines=40, vocab_size=320)
    # A base run config of our own, so the tests do not move when the packaged `tiny` config is retuned.
    (root / "base.yaml").write_text("model_name: parcae-micro\nmodel: {}\ntrain: {max_steps: 2}\n")
    return paths


def micro_spec(data, axes: list[dict], overrides: dict | None = None) -> SweepSpec:
    """A sweep of micro models on the verse data; the budget (2 steps) is the base config's."""
    base = {
        "model_name": "parcae-micro",
        "data.tokenizer_dir": str(data[0]),
        "data.shard_dir": str(data[1]),
        "data.seq_len": 16,
        "train.micro_batch_size": 2,
        "train.global_batch_size": 2,
        "log.interval": 1,
        "eval.interval": 1000,
        "checkpoint.interval": 1000,
        "eval.depths": [1],
        "sample.prompts": [],
        "log.progress": False,
        "system.threads": 1,
    }
    base.update(overrides or {})
    return SweepSpec.from_dict(
        {"name": "t", "base": str(Path(data[0]).parent / "base.yaml"), "overrides": base, "axes": axes}
    )


# ----------------------------------------------------------------------------------------- expansion


def test_grid_expansion_zipped_axes_and_backprop_rule(data, tmp_path):
    spec = micro_spec(
        data,
        [
            {"model.mean_recurrence": [1, 2, 5]},
            {"optim.adam_lr": [1e-3, 4e-3], "optim.muon_lr": [2e-3, 8e-3]},  # one axis: keys move together
        ],
    )
    points = expand(spec, tmp_path)
    assert len(points) == 6
    assert [p.settings["model.mean_recurrence"] for p in points] == [1, 1, 2, 2, 5, 5]  # last axis fastest
    for p in points:
        mu = p.settings["model.mean_recurrence"]
        assert p.model_config.mean_recurrence == mu
        assert p.model_config.mean_backprop_depth == math.ceil(mu / 2)  # the paper's sweep rule
        assert p.config.optim.muon_lr == 2 * p.config.optim.adam_lr  # zipped, not crossed
        assert p.run_dir == tmp_path / "runs" / p.name
    assert len({p.name for p in points}) == 6
    assert points[0].name == "mean_recurrence1-adam_lr0.001-muon_lr0.002"

    # An explicit backprop depth wins over the rule.
    spec = micro_spec(data, [{"model.mean_recurrence": [6]}], {"model.mean_backprop_depth": 1})
    assert expand(spec, tmp_path)[0].model_config.mean_backprop_depth == 1


def test_flops_budget_becomes_steps_like_the_trainer(data, tmp_path):
    budgets = [2e8, 4e8]
    spec = micro_spec(data, [{"train.max_flops": budgets}, {"model.mean_recurrence": [1, 4]}])
    points = expand(spec, tmp_path)
    assert len(points) == 4
    for p in points:
        fpt = flops_per_token(p.model_config, 16)
        assert p.flops_per_token == pytest.approx(fpt)
        assert p.steps == int((p.settings["train.max_flops"] / fpt) // 32)  # 32 tokens per step
        assert p.tokens == p.steps * 32
        assert p.flops == p.settings["train.max_flops"]  # nominal budget, so budgets group exactly
        assert p.config.train.budgets() == {"max_steps": p.steps}
        # Same number of steps as the trainer derives from max_flops itself.
        as_trainer = p.config.replace({"train.max_flops": p.settings["train.max_flops"]})
        assert max_steps(as_trainer, fpt, p.params) == p.steps
    # More recurrence costs more FLOPs per token, so the same budget buys fewer tokens.
    by = {(p.settings["train.max_flops"], p.settings["model.mean_recurrence"]): p for p in points}
    assert by[(4e8, 4)].flops_per_token > by[(4e8, 1)].flops_per_token
    assert by[(4e8, 4)].tokens < by[(4e8, 1)].tokens
    # n_eff counts the core once per mean recurrence.
    assert by[(4e8, 4)].n_eff - by[(4e8, 1)].n_eff == pytest.approx(3 * by[(4e8, 1)].core_params)


@pytest.mark.parametrize(
    "raw, match",
    [
        ({"name": "x", "axes": [{"adam_lr": [1, 2], "muon_lr": [1]}]}, "equal length"),
        ({"name": "x", "axes": [{"adam_lr": [1]}, {"adam_lr": [2]}]}, "appears in axes"),
        ({"name": "x", "axis": []}, "unknown key"),
        ({"name": "bad name"}, "'name'"),
        ({"name": "x", "axes": [{"adam_lr": []}]}, "non-empty list"),
    ],
)
def test_bad_sweep_files(raw, match):
    with pytest.raises(ConfigError, match=match):
        SweepSpec.from_dict(raw)


def test_bad_points(data, tmp_path):
    with pytest.raises(ConfigError, match="wall-clock"):
        expand(micro_spec(data, [], {"train.max_time_minutes": 1.0}), tmp_path)
    with pytest.raises(ConfigError, match="less than one step"):
        expand(micro_spec(data, [{"train.max_flops": [10.0]}]), tmp_path)
    with pytest.raises(ConfigError, match="unknown key 'optim.lr'"):
        expand(micro_spec(data, [{"optim.lr": [1]}]), tmp_path)
    with pytest.raises(ConfigError, match="set by the sweep"):
        expand(micro_spec(data, [], {"run_name": "x"}), tmp_path)
    with pytest.raises(ConfigError, match="unknown model field"):
        expand(micro_spec(data, [{"model.n_embdd": [8]}]), tmp_path)


def test_smoke_variant_and_overrides():
    raw = {
        "name": "s",
        "base": "tiny",
        "overrides": {"train.max_steps": 100, "data": {"seq_len": 64}},  # nested mappings become dotted
        "axes": [{"model.mean_recurrence": [1, 2, 4, 8]}, {"optim.adam_lr": [1e-3, 2e-3]}],
        "smoke": {
            "base": "tiny-gpt",
            "overrides": {"train.max_steps": 2},
            "axes": [{"model.mean_recurrence": [1, 2]}],
        },
    }
    full, smoke = SweepSpec.from_dict(raw), SweepSpec.from_dict(raw, smoke=True)
    assert (full.name, full.base, len(full.axes)) == ("s", "tiny", 2)
    assert full.overrides == {"train.max_steps": 100, "data.seq_len": 64}
    assert (smoke.name, smoke.base) == ("s-smoke", "tiny-gpt")
    assert smoke.overrides == {
        "train.max_steps": 2,
        "data.seq_len": 64,
    }  # smoke overrides go over the sweep's
    assert [a.keys for a in smoke.axes] == [("model.mean_recurrence",)]  # and its axes replace the sweep's
    no_axes = {**raw, "smoke": {"overrides": {"train.max_steps": 2}}}
    assert SweepSpec.from_dict(no_axes, smoke=True).axes == full.axes  # no smoke axes: the sweep's
    with pytest.raises(ConfigError, match="no 'smoke' section"):
        SweepSpec.from_dict({"name": "x"}, smoke=True)
    with pytest.raises(ConfigError, match=r"smoke: unknown key\(s\) name"):
        SweepSpec.from_dict({"name": "x", "smoke": {"name": "y"}}, smoke=True)

    # Overrides for every point: a new budget replaces the sweep's; axes cannot be overridden.
    shorter = full.with_overrides({"train.max_tokens": 1e5, "seed": 3})
    assert shorter.overrides == {"data.seq_len": 64, "train.max_tokens": 1e5, "seed": 3}
    assert full.overrides["train.max_steps"] == 100  # the original is unchanged
    with pytest.raises(ConfigError, match="optim.adam_lr is an axis"):
        full.with_overrides({"optim": {"adam_lr": 1e-2}})
    budget_axis = SweepSpec.from_dict({"name": "b", "axes": [{"train.max_flops": [1e9, 2e9]}]})
    with pytest.raises(ConfigError, match=r"its budget is an axis \(train.max_flops\)"):
        budget_axis.with_overrides({"train.max_steps": 5})


def test_sweep_yaml_file_and_relative_base(tmp_path, data):
    (tmp_path / "base.yaml").write_text(
        "model_name: parcae-micro\ntrain: {max_steps: 3}\ndata: {seq_len: 16}\n"
    )
    (tmp_path / "s.yaml").write_text(
        "name: s\nbase: base.yaml\noverrides:\n"
        f"  data.tokenizer_dir: {data[0]}\n  data.shard_dir: {data[1]}\n"
        "  train.micro_batch_size: 2\n  train.global_batch_size: 2\n"
        "axes:\n  - model.mean_recurrence: [2, 3]\n"
    )
    spec = SweepSpec.from_yaml(tmp_path / "s.yaml")
    assert spec.base == str(tmp_path / "base.yaml")
    points = expand(spec, tmp_path / "out")
    assert [p.steps for p in points] == [3, 3]


# ----------------------------------------------------------------------------------------- emitting


def test_emitted_commands_reproduce_each_point(data, tmp_path):
    spec = micro_spec(data, [{"model.mean_recurrence": [2, 4]}, {"train.max_flops": [2e8]}])
    points = expand(spec, tmp_path)
    lines = emit_commands(points, Emit.TORCHRUN, nproc_per_node=8)
    assert len(lines) == 2
    for line, p in zip(lines, points):
        argv = shlex.split(line)
        assert argv[:5] == ["torchrun", "--standalone", "--nproc_per_node=8", "--no-python", "parcae"]
        assert argv[5:] == ["train", "--config", str(tmp_path / "configs" / f"{p.name}.yaml")]
        cfg = load_run_config(None, argv[6:])  # what `parcae train` parses from those arguments
        expected = p.config.to_dict()
        assert cfg.to_dict() == expected  # same config, explicit steps, resumable
        assert cfg.train.max_steps == p.steps and cfg.resume
    slurm = emit_commands(points, Emit.SLURM, nproc_per_node=4, slurm_args="-p gpu")
    mkdir, sbatch = slurm[0].split(" && ", 1)
    assert shlex.split(mkdir) == ["mkdir", "-p", str(points[0].run_dir)]  # Slurm needs the log directory
    argv = shlex.split(sbatch)
    assert argv[0] == "sbatch" and "--gpus-per-node=4" in argv and "-p" in argv
    assert f"--output={points[0].run_dir}/slurm-%j.log" in argv
    assert argv[argv.index("--wrap") + 1] == lines[0].replace("nproc_per_node=8", "nproc_per_node=4")
    # A finished point is not emitted again.
    (points[0].run_dir).mkdir(parents=True)
    (points[0].run_dir / SUMMARY).write_text("{}")
    assert len(emit_commands(points, Emit.TORCHRUN)) == 1


# ------------------------------------------------------------------------- running, resuming, table


def test_sweep_runs_resumes_and_feeds_parcae_fit(data, tmp_path, monkeypatch):
    spec = micro_spec(data, [{"train.max_flops": [1.5e8, 3e8]}, {"model.mean_recurrence": [1, 2, 3]}])
    first = run_sweep(spec, tmp_path, progress=False)
    assert len(first.ran) == 6 and not first.skipped
    assert all((p.run_dir / SUMMARY).is_file() for p in first.points)
    stamps = {p.name: (p.run_dir / SUMMARY).stat().st_mtime_ns for p in first.points}

    # Second invocation: nothing trains (the trainer must not even be called).
    def boom(*a, **k):
        raise AssertionError("a finished point was trained again")

    monkeypatch.setattr(runner, "train", boom)
    second = run_sweep(spec, tmp_path, progress=False)
    assert not second.ran and len(second.skipped) == 6
    assert {p.name: (p.run_dir / SUMMARY).stat().st_mtime_ns for p in second.points} == stamps

    # The same output directory with edited settings is refused rather than silently reused.
    edited = micro_spec(
        data,
        [{"train.max_flops": [1.5e8, 3e8]}, {"model.mean_recurrence": [1, 2, 3]}],
        {"optim.adam_lr": 1e-3},
    )
    with pytest.raises(ConfigError, match="adam_lr"):
        run_sweep(edited, tmp_path, progress=False)

    # The table: one row per point, with the columns `parcae fit` reads.
    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    for col in (F.FLOPS, F.MEAN_RECURRENCE, F.TOKENS, F.N_EFF, F.NUM_STEPS, F.LOSS, "val_bpb", "val_loss_d1"):
        assert col in rows[0], col
    jsonl = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    for row, point in zip(jsonl, first.points):
        summary = json.loads((point.run_dir / SUMMARY).read_text())
        assert row[F.LOSS] == summary["val_loss"]
        assert row[F.TOKENS] == summary["tokens"] == point.tokens
        assert row[F.NUM_STEPS] == row[F.MEAN_RECURRENCE] == point.settings["model.mean_recurrence"]
        assert row["status"] == "ok" and row["diverged"] is False
        assert row["spectral_radius_max"] < 1.0  # diagonal injection: ρ(Ā) < 1 by construction
        assert row["state_norm_max"] > 0
    table = F.RunTable.read(tmp_path / "results.csv")
    for col in (F.FLOPS, F.MEAN_RECURRENCE, F.TOKENS, F.N_EFF, F.NUM_STEPS, F.LOSS):
        assert table.numeric(col).shape == (6,)
    assert sorted(set(table.numeric(F.FLOPS))) == [1.5e8, 3e8]

    out = tmp_path / "fit"
    rc = cli_main(
        [
            "fit",
            "parametric",
            str(tmp_path / "results.csv"),
            "--out",
            str(out),
            "--n_starts",
            "2",
            "--n_candidates",
            "64",
        ]
    )
    assert rc == 0
    assert json.loads((out / "parametric.json").read_text())["rows"] == 6


def test_diverged_point_is_recorded_and_not_rerun(data, tmp_path, monkeypatch):
    real_train = runner.train

    def diverge_at_mu2(cfg, start_time=None):
        if cfg.run_name.startswith("mean_recurrence2"):
            raise TrainingError("non-finite loss, gradient norm or weights at step 1 (training)")
        return real_train(cfg, start_time)

    monkeypatch.setattr(runner, "train", diverge_at_mu2)
    spec = micro_spec(data, [{"model.mean_recurrence": [1, 2]}])
    result = run_sweep(spec, tmp_path, progress=False)
    by = {r["point"]: r for r in result.rows}
    assert by["mean_recurrence2"]["status"] == "diverged" and by["mean_recurrence2"]["diverged"] is True
    assert by["mean_recurrence2"][F.LOSS] is None
    assert by["mean_recurrence1"]["status"] == "ok"
    assert (tmp_path / "runs" / "mean_recurrence2" / DIVERGED).is_file()
    again = run_sweep(spec, tmp_path, progress=False)
    assert not again.ran


def test_spike_stats():
    steps = list(range(10, 110, 10))
    smooth = [8.0, 6.0, 5.0, 4.5, 4.2, 4.0, 3.9, 3.8, 3.7, 3.6]
    s = spike_stats(steps, smooth, total_steps=100)
    assert s["loss_spikes"] == 0 and s["final_loss_over_min"] == pytest.approx(1.0)
    spiky = [8.0, 6.0, 5.0, 4.0, 7.0, 4.1, 3.9, 9.0, 3.8, 3.7]
    s = spike_stats(steps, spiky, total_steps=100)
    assert s["loss_spikes"] == 2  # 7.0 > 1.5 x 4.0 and 9.0 > 1.5 x 3.9
    assert s["max_loss_over_min"] == pytest.approx(9.0 / 3.9)
    # A spike during the first 10% of the run does not count; a blow-up at the end is visible.
    s = spike_stats([5, 10, 20, 30], [8.0, 20.0, 5.0, 9.0], total_steps=100)
    assert s["loss_spikes"] == 1 and s["final_loss_over_min"] == pytest.approx(9.0 / 5.0)
    assert spike_stats([10, 20], [5.0, None], total_steps=100)["loss_spikes"] == 1


# ----------------------------------------------------------------------------------------- CLI


def test_cli_dry_run_and_emit(data, tmp_path, capsys):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(json.dumps(micro_spec(data, [{"model.mean_recurrence": [2, 3]}]).to_dict()))
    assert cli_main(["sweep", str(sweep), "--out", str(tmp_path / "o"), "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert "2 points" in out and "[todo] mean_recurrence2" in out
    assert cli_main(["sweep", str(sweep), "--out", str(tmp_path / "o"), "--emit", "slurm"]) == 0
    out = capsys.readouterr().out
    assert out.count("sbatch ") == 2
    assert cli_main(["sweep", str(tmp_path / "missing.yaml")]) == 1
