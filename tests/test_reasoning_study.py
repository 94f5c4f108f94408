"""The reasoning study (experiments/reasoning/): its sweep expands to the five models it compares, and its
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
    assert sorted(m.injection_type.value for m in parcae) == ["add", "diagonal", "linear"]
    m = parcae[0]
    blocks = m.n_layers_in_prelude + m.n_layers_in_recurrent_block + m.n_layers_in_coda
    unrolled = m.n_layers_in_prelude + m.mean_recurrence * m.n_layers_in_recurrent_block + m.n_layers_in_coda
    assert gpt == [blocks, unrolled]


def test_smoke_study_end_to_end(script, tmp_path):
    harness = sys.modules["harness"]
    result, report = harness.run(
        script.SWEEP, script.analyse, tmp_path, smoke=True, progress=False, text=False
    )
    assert len(result.rows) == 5 and all(r["status"] == "ok" for r in result.rows)
    figs = tmp_path / "figures"
    models = json.loads((figs / "models.json").read_text())
    assert set(models) == {"parcae-diagonal", "parcae-add", "parcae-linear", "gpt-3", "gpt-6"}
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
