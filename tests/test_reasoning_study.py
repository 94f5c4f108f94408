"""The reasoning study (experiments/reasoning/): its sweep expands to the six models it compares, and its
smoke variant trains them on generated problems and runs the whole analysis (tables, headline, figures)."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from parcae_lm.scaling.sweep import SweepSpec, expand

STUDY = Path(__file__).resolve().parents[1] / "experiments" / "reasoning"


@pytest.fixture(scope="module")
def script():
    with pytest.MonkeyPatch.context() as mp:
        spec = importlib.util.spec_from_file_location("experiment_reasoning", STUDY / "reasoning.py")
        module = importlib.util.module_from_spec(spec)
        mp.setitem(sys.modules, spec.name, module)
        spec.loader.exec_module(module)
        yield module


def test_the_sweep_compares_equal_parameters_and_equal_depth(tmp_path):
    points = expand(SweepSpec.from_yaml(STUDY / "reasoning.yaml"), tmp_path)
    configs = [p.config for p in points]
    assert {c.data.tasks[0].value for c in configs} == {"add"} and len(
        {c.train.max_steps for c in configs}
    ) == 1
    parcae = [c.model_config(259) for c in configs if c.model_name.startswith("parcae")]
    gpt = sorted(c.model_config(259).n_layer for c in configs if c.model_name.startswith("gpt"))
    assert sorted(m.injection_type.value for m in parcae) == ["add", "diagonal", "diagonal", "linear"]
    assert sorted(m.recurrent_iteration_method.value for m in parcae)[0] == "per-batch"
    m = parcae[0]
    blocks = m.n_layers_in_prelude + m.n_layers_in_recurrent_block + m.n_layers_in_coda
    unrolled = m.n_layers_in_prelude + m.mean_recurrence * m.n_layers_in_recurrent_block + m.n_layers_in_coda
    assert gpt == [blocks, unrolled]


def test_the_chase_sweep_trains_parcae_and_both_gpts_on_chase_alone(tmp_path):
    points = expand(SweepSpec.from_yaml(STUDY / "chase.yaml"), tmp_path)
    configs = [p.config for p in points]
    assert {tuple(t.value for t in c.data.tasks) for c in configs} == {("chase",)}
    assert len({c.train.max_steps for c in configs}) == 1 and len({c.data.seq_len for c in configs}) == 1
    parcae = [c.model_config(259) for c in configs if c.model_name.startswith("parcae")]
    gpt = sorted(c.model_config(259).n_layer for c in configs if c.model_name.startswith("gpt"))
    assert [m.injection_type.value for m in parcae] == ["diagonal"]
    m = parcae[0]
    blocks = m.n_layers_in_prelude + m.n_layers_in_recurrent_block + m.n_layers_in_coda
    unrolled = m.n_layers_in_prelude + m.mean_recurrence * m.n_layers_in_recurrent_block + m.n_layers_in_coda
    assert gpt == [blocks, unrolled]


def test_the_command_line_picks_the_sweep(script, monkeypatch):
    seen = {}
    monkeypatch.setattr(script, "main", lambda sweep, *a, argv, **k: seen.update(sweep=sweep, argv=argv) or 0)
    assert script.cli(["--sweep", "chase", "--smoke"]) == 0
    assert seen == {"sweep": STUDY / "chase.yaml", "argv": ["--smoke"]}
    script.cli([])
    assert seen["sweep"] == STUDY / "reasoning.yaml"


def _tables():
    """A tiny made-up result: a looped model at T = 2, 4, 8 and a GPT, on add difficulties 4 and 5."""
    facts = {
        "parcae-diagonal": {
            "model": "parcae-diagonal",
            "params": 1000,
            "mean_recurrence": 4,
            "spectral_radius": 0.5,
            "unrolled_depth": 6,
        },
        "gpt-3": {"model": "gpt-3", "params": 1000, "unrolled_depth": 3},
    }
    rows = [
        {
            "model": "parcae-diagonal",
            "task": "add",
            "difficulty": d,
            "trained": d <= 4,
            "depth": t,
            "accuracy": acc,
            "state_norm": 10.0 * t,
            "residual": 1.0 / t,
        }
        for d, t, acc in [
            (4, 2, 0.5),
            (4, 4, 0.9),
            (4, 8, 0.8),
            (4, 16, 0.7),
            (4, 32, 0.6),
            (5, 4, 0.1),
            (5, 8, 0.2),
            (5, 16, 0.3),
            (5, 32, 0.3),
        ]
    ]
    rows += [
        {"model": "gpt-3", "task": "add", "difficulty": d, "trained": d <= 4, "depth": None, "accuracy": a}
        for d, a in [(4, 0.25), (5, 0.0)]
    ]
    adaptive = [
        {
            "model": "parcae-diagonal",
            "task": "add",
            "difficulty": d,
            "rule": rule,
            "threshold": tau,
            "max_steps": cap,
            "accuracy": acc,
            "mean_iterations": it,
        }
        for rule, tau, cap, d, acc, it in [
            ("fixed", 0.0, 4, 4, 0.9, 4),
            ("fixed", 0.0, 4, 5, 0.1, 4),
            ("fixed", 0.0, 2, 4, 0.5, 2),
            ("fixed", 0.0, 2, 5, 0.0, 2),
            ("state", 0.1, 16, 4, 0.9, 2),
            ("state", 0.1, 16, 5, 0.1, 3),
            ("state", 0.01, 16, 4, 0.9, 5),
            ("state", 0.01, 16, 5, 0.3, 9),
        ]
    ]
    return rows, facts, adaptive


def test_headline_numbers_come_from_the_tables(script):
    rows, facts, adaptive = _tables()
    head = script.headline(rows, facts, adaptive)
    assert head["add"]["parcae_at_mu"] == 0.9 and head["add"]["gpt-3"] == 0.25
    assert head["add"]["beyond_trained"] == {"T=4": 0.1, "T=8": 0.2, "T=16": 0.3, "T=32": 0.3}
    assert head["injections"]["parcae-diagonal"]["acc_T=32"] == 0.6
    assert head["injections"]["parcae-diagonal"]["state_norm_T=4"] == 40.0
    fixed = head["adaptive"]["fixed_at_mu"]
    assert fixed == {"accuracy": 0.5, "mean_iterations": 4}
    # state 0.1 (2.5 iterations) matches fixed depth 4 within a point; state 0.01 costs 7
    assert head["adaptive"]["cheapest_matching_rule"] == {
        "rule": "state 0.1",
        "accuracy": 0.5,
        "mean_iterations": 2.5,
        "fraction_of_fixed": 0.625,
    }


def test_figures_draw_from_tiny_tables(script, tmp_path):
    rows, facts, adaptive = _tables()
    paths = [
        script.plot_models(rows, facts, tmp_path / "m.png"),
        script.plot_depth(rows, facts, tmp_path / "d.png"),
        script.plot_injections(rows, facts, tmp_path / "i.png"),
        script.plot_adaptive(adaptive, tmp_path / "a.png"),
    ]
    assert all(p.stat().st_size > 1000 for p in paths)


@pytest.mark.slow
def test_smoke_study_end_to_end(script, tmp_path):
    harness = sys.modules["harness"]
    result, report = harness.run(
        script.SWEEP, script.analyse, tmp_path, smoke=True, progress=False, text=False
    )
    assert len(result.rows) == 6 and all(r["status"] == "ok" for r in result.rows)
    figs = tmp_path / "figures"
    models = json.loads((figs / "models.json").read_text())
    assert set(models) == {
        "parcae-diagonal",
        "parcae-add",
        "parcae-linear",
        "gpt-3",
        "gpt-6",
        "parcae-diagonal-per-batch",
    }
    assert models["parcae-add"]["spectral_radius"] == 1.0 and models["parcae-diagonal"]["spectral_radius"] < 1
    rows = list(csv.DictReader((figs / "accuracy.csv").open()))
    assert {r["depth"] for r in rows if r["model"] == "gpt-3"} == {""}
    assert {int(r["depth"]) for r in rows if r["model"] == "parcae-add"} == {2, 4, 8}
    assert {int(r["difficulty"]) for r in rows} == set(range(1, 9))
    adaptive = list(csv.DictReader((figs / "adaptive.csv").open()))
    fixed = [r for r in adaptive if r["rule"] == "fixed"]
    assert all(float(r["mean_iterations"]) == int(r["max_steps"]) for r in fixed)
    assert {int(r["max_steps"]) for r in fixed} == {1, 2, 4, 8, 16}
    head = json.loads((figs / "headline.json").read_text())
    assert {"add", "injections", "adaptive"} <= set(head)
    assert head["add"]["hardest_trained_difficulty"] == 4
    assert {p.name for p in report.figures} == {"models.png", "depth.png", "injections.png", "adaptive.png"}
    assert "parcae-diagonal" in (tmp_path / "report.md").read_text()
