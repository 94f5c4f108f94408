"""Where the loop pays: Parcae against GPTs on the synthetic reasoning tasks; the grid is reasoning.yaml
(`add`), or chase.yaml (`chase`: the diagonal Parcae and both GPTs) with --sweep chase.

    python experiments/reasoning/reasoning.py [--sweep chase] [--smoke] [--out studies/reasoning] [--figures DIR]

Trains every point of the sweep (Parcae with the diagonal, additive and linear injection, Parcae with one
depth per batch instead of per sequence, a GPT with Parcae's three unique blocks and a GPT as deep as
Parcae's unrolled depth) on the same generated problems for the same steps, then scores each on the held-out
problems of every task and test difficulty (those harder than trained included):

- accuracy.csv: exact-match accuracy, answer loss, ‖h_T‖, ‖h_T − h_{T−1}‖ per model, task, difficulty and
  test-time depth T (looped models at T = 1 … 8× their mean recurrence; a GPT at its one depth);
- models.json: per model its parameters, training steps, ρ(Ā) and final training loss;
- adaptive.csv: the diagonal Parcae with per-problem exits (state, kl, confidence rules at several τ, at
  most 4× its mean recurrence iterations): accuracy and mean iterations per task and difficulty;
- headline.json: the study's target comparisons computed from those tables;
- PNG figures of each, written with the CSV/JSON to --figures (default OUT/figures).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the shared experiments/harness.py
from harness import Context, Report, main  # noqa: E402

from parcae_lm.checkpoint import load_run  # noqa: E402
from parcae_lm.data.reasoning import held_out_problems, task_spec  # noqa: E402
from parcae_lm.eval.reasoning import Exit, ExitRule, evaluate, evaluate_adaptive  # noqa: E402
from parcae_lm.files import atomic_write_text  # noqa: E402
from parcae_lm.model.parcae import Parcae  # noqa: E402
from parcae_lm.scaling.runner import SweepResult  # noqa: E402

SWEEP = Path(__file__).with_name("reasoning.yaml")
SWEEPS = {"reasoning": SWEEP, "chase": Path(__file__).with_name("chase.yaml")}  # --sweep NAME
DEPTH_FACTORS = [0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8]  # test-time depths as multiples of μ_rec
SMOKE_DEPTH_FACTORS = [0.5, 1, 2]
PER_DIFFICULTY, SMOKE_PER_DIFFICULTY = 100, 4
THRESHOLDS = {
    ExitRule.state: [0.3, 0.1, 0.03, 0.01],
    ExitRule.kl: [0.1, 0.03, 0.01, 0.001],
    ExitRule.confidence: [0.8, 0.9, 0.95, 0.99],
}


def label(config: dict[str, Any]) -> str:
    """A model's name in the tables: gpt-<layers>, or parcae-<injection>[-per-batch]."""
    model = config["model"]
    if config["model_name"].startswith("gpt"):
        return f"gpt-{model['n_layer']}"
    name = f"parcae-{model.get('injection_type', 'diagonal')}"
    if model.get("recurrent_iteration_method", "per-sequence") != "per-sequence":
        name += f"-{model['recurrent_iteration_method']}"
    return name


def depths_of(mean_recurrence: int, factors: Sequence[float]) -> list[int]:
    return sorted({max(1, round(f * mean_recurrence)) for f in factors})


def score(run_dir: Path, smoke: bool) -> tuple[list[dict[str, Any]], dict[str, Any], list[dict[str, Any]]]:
    """(accuracy rows, model facts, adaptive rows) of one trained run."""
    run = load_run(run_dir, device="cpu")
    config = run.meta["run_config"]
    name, model = label(config), run.model
    tasks = config["data"]["tasks"]
    problems = held_out_problems(tasks, SMOKE_PER_DIFFICULTY if smoke else PER_DIFFICULTY)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in metrics if r.get("kind") == "train"]
    facts: dict[str, Any] = {
        "model": name,
        "params": sum(p.numel() for p in model.parameters()),
        "steps": train[-1]["step"],
        "final_train_loss": train[-1]["loss"],
        "run": run_dir.name,  # the sweep point, under OUT/runs/
    }
    looped = isinstance(model, Parcae)
    if looped:
        mu = int(model.config.mean_recurrence)
        facts |= {"mean_recurrence": mu, **model.diagnostics()}
        depths: list[int | None] = list(depths_of(mu, SMOKE_DEPTH_FACTORS if smoke else DEPTH_FACTORS))
        facts["unrolled_depth"] = model.config.n_layers_in_prelude + model.config.n_layers_in_coda
        facts["unrolled_depth"] += mu * model.config.n_layers_in_recurrent_block
    else:
        depths = [None]
        facts["unrolled_depth"] = model.config.n_layer
    rows = []
    for cell in evaluate(model, problems, run.tokenizer, depths, batch_size=500):
        rows.append(
            {"model": name, **{k: v for k, v in cell.to_dict().items() if k not in ("nats", "tokens")}}
        )
    adaptive = []
    if looped and name == "parcae-diagonal":
        cap = 4 * mu
        exits = [Exit(ExitRule.fixed, 0.0, d) for d in depths_of(mu, [0.25, 0.5, 1, 2, 4])]
        thresholds = {r: t[:1] for r, t in THRESHOLDS.items()} if smoke else THRESHOLDS
        exits += [Exit(rule, t, cap) for rule, ts in thresholds.items() for t in ts]
        for cell in evaluate_adaptive(model, problems, run.tokenizer, exits, batch_size=500):
            adaptive.append({"model": name, **cell.to_dict()})
    return rows, facts, adaptive


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    lines: list[str] = []

    class _Sink:
        def write(self, s: str) -> None:
            lines.append(s)

    writer = csv.DictWriter(_Sink(), columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, "".join(lines))
    return path


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def at(rows: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


# ---------------------------------------------------------------------- the analysis


def headline(rows: list[dict[str, Any]], facts: dict[str, dict[str, Any]], adaptive: list[dict[str, Any]]):
    """The target comparisons, each a number computed from the tables."""
    out: dict[str, Any] = {}
    parcae = facts.get("parcae-diagonal")
    if parcae is None:
        return out
    mu = parcae["mean_recurrence"]
    gpts = sorted(
        (f for f in facts.values() if f["model"].startswith("gpt")), key=lambda f: f["unrolled_depth"]
    )
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    for task in tasks:
        hardest = task_spec(task).train[1]
        entry: dict[str, Any] = {"hardest_trained_difficulty": hardest}
        entry["parcae_at_mu"] = at(rows, model="parcae-diagonal", task=task, difficulty=hardest, depth=mu)[0][
            "accuracy"
        ]
        for g in gpts:
            entry[g["model"]] = at(rows, model=g["model"], task=task, difficulty=hardest)[0]["accuracy"]
        # depth extrapolation: harder-than-trained difficulties, mean accuracy at T = μ, 2μ, 4μ, 8μ
        beyond = [r for r in at(rows, model="parcae-diagonal", task=task) if not r["trained"]]
        entry["beyond_trained"] = {
            f"T={k * mu}": mean([r["accuracy"] for r in beyond if r["depth"] == k * mu]) for k in (1, 2, 4, 8)
        }
        trained = [r for r in at(rows, model="parcae-diagonal", task=task) if r["trained"]]
        entry["trained"] = {
            f"T={k * mu}": mean([r["accuracy"] for r in trained if r["depth"] == k * mu])
            for k in (1, 2, 4, 8)
        }
        out[task] = entry
    # overthinking: accuracy over trained difficulties at T = μ and T = 8μ per injection
    out["injections"] = {}
    for name, f in facts.items():
        if not name.startswith("parcae"):
            continue
        m = f["mean_recurrence"]
        trained = [r for r in at(rows, model=name) if r["trained"]]
        out["injections"][name] = {
            "spectral_radius": f["spectral_radius"],
            **{
                f"acc_T={k * m}": mean([r["accuracy"] for r in trained if r["depth"] == k * m])
                for k in (1, 8)
            },
            **{
                f"state_norm_T={k * m}": mean([r["state_norm"] for r in trained if r["depth"] == k * m])
                for k in (1, 8)
            },
        }
    if adaptive:
        out["adaptive"] = adaptive_summary(adaptive, mu)
    return out


def _exit(row: dict[str, Any]) -> tuple[str, float]:
    """An exit's name: (rule, τ), a fixed exit by its depth."""
    return (row["rule"], row["max_steps"] if row["rule"] == "fixed" else row["threshold"])


def adaptive_summary(adaptive: list[dict[str, Any]], mu: int) -> dict[str, Any]:
    """Per exit: accuracy and mean iterations over all test cells; and the cheapest rule that stays
    within one accuracy point of fixed depth μ."""
    exits: dict[tuple[str, float], dict[str, float]] = {}
    for key in dict.fromkeys(_exit(r) for r in adaptive):
        cells = [r for r in adaptive if _exit(r) == key]
        exits[key] = {
            "accuracy": mean([c["accuracy"] for c in cells]),
            "mean_iterations": mean([c["mean_iterations"] for c in cells]),
        }
    fixed = exits[("fixed", mu)]
    matching = [
        (v["mean_iterations"], k)
        for k, v in exits.items()
        if k[0] != "fixed" and v["accuracy"] >= fixed["accuracy"] - 0.01
    ]
    best = min(matching) if matching else None
    return {
        "fixed_at_mu": fixed,
        "exits": {f"{k[0]} {k[1]}": v for k, v in exits.items()},
        "cheapest_matching_rule": None
        if best is None
        else {"rule": f"{best[1][0]} {best[1][1]}", **exits[best[1]], "fraction_of_fixed": best[0] / mu},
    }


def plot_depth(rows: list[dict[str, Any]], facts: dict[str, dict[str, Any]], path: Path) -> Path:
    """Accuracy vs test-time depth per difficulty (the diagonal Parcae), with the GPTs' accuracy."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.8), squeeze=False)
    mu = facts["parcae-diagonal"]["mean_recurrence"]
    for ax, task in zip(axes[0], tasks):
        cells = at(rows, model="parcae-diagonal", task=task)
        levels = sorted({r["difficulty"] for r in cells})
        cmap = plt.get_cmap("viridis")
        for i, d in enumerate(levels):
            line = sorted((r["depth"], r["accuracy"]) for r in cells if r["difficulty"] == d)
            trained = at(cells, difficulty=d)[0]["trained"]
            ax.plot(
                *zip(*line),
                marker="o",
                ms=3,
                color=cmap(i / max(len(levels) - 1, 1)),
                ls="-" if trained else "--",
                label=f"d={d}" + ("" if trained else " (beyond)"),
            )
        ax.axvline(mu, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("test-time depth T (iterations)")
        ax.set_ylabel("exact-match accuracy")
        ax.set_title(f"{task} (parcae-diagonal, trained μ_rec={mu})")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_models(rows: list[dict[str, Any]], facts: dict[str, dict[str, Any]], path: Path) -> Path:
    """Accuracy by difficulty of every model at its training depth (a looped model at T = μ_rec)."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for name, f in facts.items():
            depth = f.get("mean_recurrence")
            cells = sorted(
                (r["difficulty"], r["accuracy"])
                for r in at(rows, model=name, task=task)
                if r["depth"] == depth
            )
            ax.plot(*zip(*cells), marker="o", ms=3, label=f"{name} ({f['params'] / 1e3:.0f}k)")
        ax.axvline(task_spec(task).train[1] + 0.5, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(f"difficulty ({task_spec(task).unit}); right of the line: harder than trained")
        ax.set_ylabel("exact-match accuracy")
        ax.set_title(task)
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_injections(rows: list[dict[str, Any]], facts: dict[str, dict[str, Any]], path: Path) -> Path:
    """Per injection, against T: accuracy (trained difficulties), ‖h_T‖ and ‖h_T − h_{T−1}‖."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for name, f in facts.items():
        if not name.startswith("parcae"):
            continue
        cells = [r for r in at(rows, model=name) if r["trained"]]
        depths = sorted({r["depth"] for r in cells})
        lab = f"{name} (ρ(Ā)={f['spectral_radius']:.3f})"
        for ax, key in zip(axes, ("accuracy", "state_norm", "residual")):
            ax.plot(
                depths,
                [mean([r[key] for r in cells if r["depth"] == d]) for d in depths],
                marker="o",
                ms=3,
                label=lab,
            )
    for ax, title in zip(
        axes, ("accuracy (trained difficulties)", "state norm ‖h_T‖", "residual ‖h_T − h_{T−1}‖")
    ):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("test-time depth T")
        ax.set_title(title)
    axes[1].set_yscale("log")
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_adaptive(adaptive: list[dict[str, Any]], path: Path) -> Path:
    """Accuracy vs mean iterations of every exit rule against fixed depth, and iterations by difficulty."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for rule in dict.fromkeys(r["rule"] for r in adaptive):
        points = []
        for key in dict.fromkeys(_exit(r) for r in at(adaptive, rule=rule)):
            cells = [r for r in adaptive if _exit(r) == key]
            points.append((mean([c["mean_iterations"] for c in cells]), mean([c["accuracy"] for c in cells])))
        points.sort()
        axes[0].plot(*zip(*points), marker="o", ms=4, ls="-" if rule == "fixed" else "--", label=rule)
    axes[0].set_xlabel("mean iterations per problem")
    axes[0].set_ylabel("accuracy (all test cells)")
    axes[0].set_title("adaptive vs fixed depth (parcae-diagonal)")
    axes[0].legend(fontsize=7)
    for rule in (r for r in dict.fromkeys(r["rule"] for r in adaptive) if r != "fixed"):
        ts = list(dict.fromkeys(r["threshold"] for r in at(adaptive, rule=rule)))
        t = ts[len(ts) // 2]
        for task in dict.fromkeys(r["task"] for r in adaptive):
            cells = sorted(
                (c["difficulty"], c["mean_iterations"])
                for c in at(adaptive, rule=rule, threshold=t, task=task)
            )
            axes[1].plot(*zip(*cells), marker="o", ms=3, label=f"{task}, {rule} τ={t}")
    axes[1].set_xlabel("difficulty")
    axes[1].set_ylabel("mean iterations")
    axes[1].set_title("iterations spent by difficulty")
    axes[1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def analyse(result: SweepResult, context: Context) -> Report:
    rows, facts, adaptive = [], {}, []
    for r in result.rows:
        if r["status"] != "ok":
            continue
        acc, f, ad = score(Path(r["run_dir"]), context.smoke)
        rows += acc
        facts[f["model"]] = f
        adaptive += ad
    out = context.fig_dir
    write_csv(rows, out / "accuracy.csv")
    atomic_write_text(out / "models.json", json.dumps(facts, indent=2) + "\n")
    if adaptive:
        write_csv(adaptive, out / "adaptive.csv")
    head = headline(rows, facts, adaptive)
    atomic_write_text(out / "headline.json", json.dumps(head, indent=2) + "\n")
    figures = [plot_models(rows, facts, out / "models.png")]
    if "parcae-diagonal" in facts:
        figures += [
            plot_depth(rows, facts, out / "depth.png"),
            plot_injections(rows, facts, out / "injections.png"),
        ]
    if adaptive:
        figures.append(plot_adaptive(adaptive, out / "adaptive.png"))
    md = "Models:\n\n" + table(
        list(facts.values()),
        ["model", "params", "unrolled_depth", "steps", "final_train_loss", "spectral_radius"],
    )
    md += "\nHeadline comparisons (headline.json):\n\n```json\n" + json.dumps(head, indent=1) + "\n```\n"
    return Report(md, figures, {"headline": head})


def cli(argv: Sequence[str] | None = None) -> int:
    """The harness's command line plus --sweep: which grid to run (reasoning.yaml or chase.yaml)."""
    pick = argparse.ArgumentParser(add_help=False)
    pick.add_argument("--sweep", choices=sorted(SWEEPS), default="reasoning")
    known, rest = pick.parse_known_args(argv)
    return main(SWEEPS[known.sweep], analyse, __doc__, argv=rest, text=False)


if __name__ == "__main__":
    sys.exit(cli())
