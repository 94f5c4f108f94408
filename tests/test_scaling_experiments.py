"""The paper's studies as experiment files (experiments/*.yaml + their analysis scripts): every sweep file
expands, and every smoke variant runs end to end through its analysis (report.md, figures, fits).

Runs train micro models on a synthetic corpus built here (seconds)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

from parcae_lm.errors import ConfigError
from parcae_lm.scaling.sweep import SweepSpec, expand
from parcae_lm.scaling.table import NUM_STEPS, RunTable
from verse import verse_shards

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
STUDIES = ["stability", "parcae-vs-gpt", "scaling", "test-time"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    return verse_shards(tmp_path_factory.mktemp("study-data"), train_docs=16, val_lines=40, vocab_size=320)


@pytest.fixture(scope="module")
def scripts() -> dict[str, ModuleType]:
    """The experiment scripts, imported as they run: with experiments/ on the path (for `harness`)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(EXPERIMENTS))
        out = {"harness": importlib.import_module("harness")}
        for name in STUDIES:  # file names with '-' are scripts, not importable names: load them by path
            spec = importlib.util.spec_from_file_location(
                f"experiment_{name.replace('-', '_')}", EXPERIMENTS / f"{name}.py"
            )
            out[name] = importlib.util.module_from_spec(spec)
            mp.setitem(sys.modules, spec.name, out[name])  # dataclasses look their module up there
            spec.loader.exec_module(out[name])
        yield out


def run_smoke(scripts, name: str, out: Path, data, **overrides):
    return scripts["harness"].run(
        scripts[name].SWEEP, scripts[name].analyse, out, smoke=True, data=data, progress=False, **overrides
    )


def test_smoke_study_end_to_end(scripts, data, tmp_path):
    result, report = run_smoke(scripts, "test-time", tmp_path, data, overrides={"train.max_steps": 3})
    assert len(result.rows) == 2 and all(r["status"] == "ok" for r in result.rows)
    assert all(r["steps"] == 3 for r in result.rows)  # the override replaced the preset's budget
    fits = json.loads((tmp_path / "analysis.json").read_text())["fits"]["fits"]
    assert [f["label"] for f in fits] == ["mean_recurrence=2", "mean_recurrence=3"]
    for f in fits:
        assert f["n_points"] == 5 and math.isfinite(f["L_inf"]) and f["z"] >= 0
    depth_rows = RunTable.read(tmp_path / "testtime" / "results.csv")
    assert sorted(set(depth_rows.numeric(NUM_STEPS))) == [1, 2, 3, 4, 6]
    assert (tmp_path / "figures" / "test-time.png").stat().st_size > 1000
    assert "L∞" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("name", STUDIES)
def test_presets_expand(name, scripts, data, tmp_path):
    """Full and smoke variants of every study are valid grids of the intended size."""
    for smoke in (True, False):
        spec = scripts["harness"].with_data(SweepSpec.from_yaml(scripts[name].SWEEP, smoke=smoke), data)
        points = expand(spec, tmp_path)
        assert len(points) >= 2
        assert spec.name == name + ("-smoke" if smoke else "")
        assert all(p.model_config.n_embd == (32 if smoke else 64) for p in points)


def test_study_overrides_cannot_change_axes(scripts, data, tmp_path):
    with pytest.raises(ConfigError, match="axis of the"):
        run_smoke(scripts, "test-time", tmp_path, data, overrides={"model.mean_recurrence": 5})
    with pytest.raises(ConfigError, match="its budget is an axis"):
        run_smoke(scripts, "scaling", tmp_path, data, overrides={"train.max_steps": 5})


@pytest.mark.parametrize("name", [n for n in STUDIES if n != "test-time"])
def test_every_smoke_study_runs(name, scripts, data, tmp_path):
    """The other three studies' smoke variants run end to end too (the test-time one is checked above)."""
    # The scaling study's budgets are FLOPs (its axis); the others are shortened to 2 steps.
    overrides = {} if name == "scaling" else {"train.max_steps": 2}
    result, report = run_smoke(scripts, name, tmp_path, data, overrides=overrides)
    assert len(result.rows) >= 2 and all(r["status"] in ("ok", "diverged") for r in result.rows)
    assert (tmp_path / "report.md").read_text().strip()
    assert any(p.suffix == ".png" for p in (tmp_path / "figures").iterdir())
    assert all(f.is_file() for f in report.figures)


def test_script_command_line_errors(scripts, capsys):
    harness, scaling = scripts["harness"], scripts["scaling"]
    assert harness.main(scaling.SWEEP, scaling.analyse, scaling.__doc__, ["--set", "train.max_steps"]) == 1
    err = capsys.readouterr().err
    assert "--set expects KEY=VALUE" in err and "Traceback" not in err


@pytest.mark.parametrize("name, size", [("paper-isoflop-140m", 35), ("paper-isoflop-370m", 18)])
def test_paper_isoflop_sweeps_expand(name, size, tmp_path):
    """The paper-scale grids: every budget at every μ_rec, more recurrence buying fewer tokens."""
    points = expand(SweepSpec.from_yaml(EXPERIMENTS / f"{name}.yaml"), tmp_path)
    assert len(points) == size
    by_budget: dict[float, list] = {}
    for p in points:
        by_budget.setdefault(p.flops, []).append(p)
    for group in by_budget.values():
        mus = [p.model_config.mean_recurrence for p in group]
        assert mus == sorted(mus)
        assert all(a.tokens > b.tokens for a, b in zip(group, group[1:]))
