"""The four studies of the paper, in miniature (`parcae study NAME [--smoke]`).

Each study is a sweep (`parcae_lm.scaling.sweep`) plus an analysis that turns its results table into
markdown tables and PNG plots (`report.md` + figures):

- stability:     injection (diagonal / linear / add) x learning rate: divergence, loss spikes, state norm
                 and spectral radius over training (paper Table 2, Fig. 2).
- parcae-vs-gpt: Parcae against a GPT with the same unique blocks, same data and same tokens.
- scaling:       mean recurrence x FLOP budget, iso-FLOP fits of μ_rec*(C) and D*(C) (paper §5.2).
- test-time:     models trained at several μ_rec evaluated at T = 1..16, with L(T) = L∞ + Z·e^(−zT) (§5.3).

The full presets are sized for a shared 2-core CPU (d = 64 models, 64-token sequences, a few hundred steps,
about ten minutes each); `--smoke` variants (d = 32, a handful of steps) take seconds and are what the test
suite runs. They train on the Shakespeare corpus with a shortened validation split (`study_data`), so the
final evaluation of every run costs seconds rather than minutes.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parcae_lm.cache import atomic_write_text, cache_dir, file_lock
from parcae_lm.errors import ConfigError
from parcae_lm.scaling import report
from parcae_lm.scaling import table as F
from parcae_lm.scaling.isoflop import fit_isoflop
from parcae_lm.scaling.sweep import SweepResult, SweepSpec, run_sweep
from parcae_lm.scaling.testtime import fit_test_time_groups

STUDY_VAL_CHARS = 800  # characters kept from the start of each work's validation tail (42 works, ~10k tokens)
STUDY_RECIPE = 1


class StudyName(enum.StrEnum):
    STABILITY = "stability"
    PARCAE_VS_GPT = "parcae-vs-gpt"
    SCALING = "scaling"
    TEST_TIME = "test-time"


# ---------------------------------------------------------------------------------------------------
# Data


def study_data(vocab_size: int = 4096, val_chars: int = STUDY_VAL_CHARS) -> tuple[Path, Path]:
    """(tokenizer_dir, shard_dir): the default Shakespeare corpus and tokenizer, with the validation split
    cut to the first `val_chars` characters (at a line end) of each work's validation tail."""
    from parcae_lm.data.corpus import shakespeare_corpus
    from parcae_lm.data.default import prepare_default
    from parcae_lm.data.shards import prepare
    from parcae_lm.tokenizer import Tokenizer

    tok_dir, _ = prepare_default(None, vocab_size, progress=False)
    out = cache_dir("prepared", f"shakespeare-v{vocab_size}-study-val{val_chars}")
    stamp = out / "prepared.json"
    # The default corpus's stamp hashes its text, tokenizer recipe and vocab: ours extends it.
    default_key = json.loads((Path(tok_dir).parent / "prepared.json").read_text()).get("key")
    key = {"recipe": STUDY_RECIPE, "default": default_key, "val_chars": val_chars}
    with file_lock(out / ".lock"):
        if stamp.is_file() and json.loads(stamp.read_text()).get("key") == key:
            return out / "tokenizer", out / "shards"
        corpus = shakespeare_corpus()
        tok = Tokenizer.load(tok_dir)
        tok.save(out / "tokenizer")
        val = []
        for text in corpus.validation:
            cut = text[:val_chars]
            val.append(cut[: cut.rfind("\n") + 1] if "\n" in cut else cut)
        prepare(
            corpus.train,
            tok,
            out / "shards",
            val_docs=val,
            overwrite=True,
            description=[f"shakespeare (study split: first {val_chars} chars of each validation tail)"],
            progress=False,
        )
        atomic_write_text(stamp, json.dumps({"key": key}) + "\n")
    return out / "tokenizer", out / "shards"


# ---------------------------------------------------------------------------------------------------
# Presets


@dataclass(frozen=True)
class Scale:
    """Model and run settings shared by a study's points (full or smoke)."""

    model: dict[str, Any]
    run: dict[str, Any]


FULL = Scale(
    model={"model.n_embd": 64, "model.num_attention_heads": 2, "model.intermediate_size": 256},
    run={
        # Pinned rather than inherited from the packaged `tiny` config, which is tuned for `parcae train`
        # and may change: a study's numbers must not move when the default run does.
        "model_name": "parcae-tiny",
        "vocab_size": 4096,
        "muon_lr": 0.02,
        "adam_lr": 0.008,
        "warmup_fraction": 0.0,
        "cooldown_fraction": 0.5,
        "seq_len": 64,
        "micro_batch_size": 8,
        "global_batch_size": 8,
        "threads": 1,  # on a CPU shared by several jobs one thread is several times faster than two
        "log_interval": 5,
        "eval_interval": 1_000_000,  # no interval evals: the final evaluation is the result
        "eval_batches": 2,
        "save_interval": 1_000_000,  # the final step is always saved
        "keep_last_k": 1,
        "muon_momentum_warmup_steps": 30,
        "sample_prompts": [],
        "progress": False,
    },
)
SMOKE = Scale(
    model={"model.n_embd": 32, "model.num_attention_heads": 2, "model.intermediate_size": 64},
    run={**FULL.run, "seq_len": 32, "micro_batch_size": 4, "global_batch_size": 4, "log_interval": 1},
)


def _depths(depths: list[int]) -> dict[str, Any]:
    """Validation depths for the interval and the final evaluations (the mean recurrence is always added)."""
    from parcae_lm.train.config import RunConfig

    out: dict[str, Any] = {"val_depths": depths}
    if "final_val_depths" in {f.name for f in dataclasses.fields(RunConfig)}:
        out["final_val_depths"] = depths  # the base config may restrict the final evaluation's depths
    return out


# The studies' own base run config: RunConfig defaults, this, then the scale's settings. Not the packaged
# `tiny` config, which is tuned for `parcae train` and retuned over time (its model overrides would leak
# into every point, and into the GPT of parcae-vs-gpt): a study's numbers must not move when it does.
STUDY_BASE: dict[str, Any] = {"model_name": "parcae-tiny", "model": {}, "max_steps": 1}


def study_base() -> Path:
    """STUDY_BASE as a YAML file in the cache (content-addressed), usable by `parcae train` too."""
    import hashlib

    import yaml

    text = yaml.safe_dump(STUDY_BASE, sort_keys=False)
    path = cache_dir("studies") / f"base-{hashlib.sha256(text.encode()).hexdigest()[:12]}.yaml"
    if not path.is_file():
        atomic_write_text(path, "# base run config of `parcae study` (parcae_lm.scaling.studies)\n" + text)
    return path


def _spec(name: str, scale: Scale, overrides: dict, axes: list[dict], description: str) -> SweepSpec:
    return SweepSpec.from_dict(
        {
            "name": name,
            "base": str(study_base()),
            "description": description,
            "overrides": {**scale.run, **scale.model, **overrides},
            "axes": axes,
        }
    )


def stability_spec(smoke: bool) -> SweepSpec:
    # The paper sweeps 2e-4..1e-3 (Adam); this tiny model's usable range sits ~10x higher, so the four
    # values {2, 4, 6, 10}e-3 span the same 5x, and 5e-2 is added to provoke divergence. Muon (the
    # block matrices) moves with Adam at 2.5x (the ratio of the tiny configs' defaults).
    adam = [2e-3, 4e-3, 6e-3, 1e-2, 5e-2] if not smoke else [4e-3, 5e-2]
    return _spec(
        "stability" + ("-smoke" if smoke else ""),
        SMOKE if smoke else FULL,
        {"max_steps": 4 if smoke else 150, **_depths([4] if not smoke else [2])},
        [
            {"model.injection_type": ["diagonal", "linear", "add"]},
            {"adam_lr": adam, "muon_lr": [2.5 * a for a in adam]},
        ],
        "injection x learning rate: divergence, loss spikes, state norm, spectral radius",
    )


def parcae_vs_gpt_spec(smoke: bool) -> SweepSpec:
    # gpt-tiny has n_layer = 6 = prelude + core + coda of parcae-tiny: the same unique blocks.
    return _spec(
        "parcae-vs-gpt" + ("-smoke" if smoke else ""),
        SMOKE if smoke else FULL,
        {"max_steps": 4 if smoke else 400, **_depths([1, 2, 4, 8] if not smoke else [1, 2])},
        [{"model_name": ["parcae-tiny", "gpt-tiny"]}],
        "Parcae vs GPT at equal parameters and equal tokens",
    )


def scaling_spec(smoke: bool) -> SweepSpec:
    mus = [1, 2, 4, 6, 8] if not smoke else [1, 2, 3]
    budgets = [1.5e11, 3e11, 6e11] if not smoke else [2e8, 4e8]
    return _spec(
        "scaling" + ("-smoke" if smoke else ""),
        SMOKE if smoke else FULL,
        {"max_flops": budgets[0], **_depths([1])},
        [{"max_flops": budgets}, {"model.mean_recurrence": mus}],
        "mean recurrence x FLOP budget (iso-FLOP)",
    )


def test_time_spec(smoke: bool) -> SweepSpec:
    return _spec(
        "test-time" + ("-smoke" if smoke else ""),
        SMOKE if smoke else FULL,
        {"max_steps": 4 if smoke else 600, **_depths([1])},
        [{"model.mean_recurrence": [2, 4, 8] if not smoke else [2, 3]}],
        "test-time depth sweep of models trained at several mean recurrences",
    )


test_time_spec.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


# ---------------------------------------------------------------------------------------------------
# Analyses


@dataclass
class StudyReport:
    name: str
    markdown: str
    figures: list[Path]
    extra: dict[str, Any]


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    head = "| " + " | ".join(title for _, title in columns) + " |"
    sep = "|" + "---|" * len(columns)
    body = ["| " + " | ".join(_fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body]) + "\n"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    import io

    from parcae_lm.cache import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _curves(run_dir: str) -> list[dict[str, Any]]:
    from parcae_lm.train.telemetry import read_metrics

    return [r for r in read_metrics(Path(run_dir) / "metrics.jsonl") if r.get("kind") == "train"]


def analyse_stability(result: SweepResult, fig_dir: Path, data: tuple[Path, Path]) -> StudyReport:
    order = {p.settings["model.injection_type"]: i for i, p in reversed(list(enumerate(result.points)))}
    rows = sorted(result.rows, key=lambda r: (order[r["model.injection_type"]], r["adam_lr"]))
    md = [
        f"Divergence: stopped on a non-finite value, or final train loss > {1.5}x its running minimum. "
        "Loss spike: a logged train loss > 1.5x the running minimum, after the first 10% of steps.\n",
        _table(
            rows,
            [
                ("model.injection_type", "injection"),
                ("adam_lr", "Adam LR"),
                ("muon_lr", "Muon LR"),
                ("status", "status"),
                ("diverged", "diverged"),
                ("loss_spikes", "spikes"),
                ("max_loss_over_min", "max loss / min"),
                ("train_loss_final", "final train loss"),
                ("val_loss", "val loss (T=4)"),
                ("state_norm_first", "‖h_T‖ first"),
                ("state_norm_max", "‖h_T‖ max"),
                ("state_norm_final", "‖h_T‖ final"),
                ("spectral_radius_first", "ρ(Ā) first"),
                ("spectral_radius_max", "ρ(Ā) max"),
            ],
        ),
    ]
    plt = _plt()
    injections = list(dict.fromkeys(r["model.injection_type"] for r in rows))
    lrs = sorted({r["adam_lr"] for r in rows})
    colors = dict(zip(lrs, plt.cm.viridis([i / max(len(lrs) - 1, 1) * 0.9 for i in range(len(lrs))])))
    fig, axes = plt.subplots(3, len(injections), figsize=(4.2 * len(injections), 9), squeeze=False)
    metrics = [("loss", "train loss"), ("state_norm", "state norm ‖h_T‖"), ("spectral_radius", "ρ(Ā)")]
    for j, inj in enumerate(injections):
        for r in (r for r in rows if r["model.injection_type"] == inj):
            curve = _curves(r["run_dir"])
            for i, (key, label) in enumerate(metrics):
                pts = [(c["step"], c[key]) for c in curve if c.get(key) is not None]
                if pts:
                    ax = axes[i][j]
                    style = "--" if r["diverged"] else "-"
                    ax.plot(*zip(*pts), style, color=colors[r["adam_lr"]], label=f"adam {r['adam_lr']:g}")
                    ax.set_ylabel(label)
        axes[0][j].set_title(f"injection = {inj}")
        axes[1][j].set_yscale("log")
        axes[2][j].axhline(1.0, color="gray", ls=":", lw=1)  # ρ = 1: the stability boundary
        axes[2][j].set_xlabel("step")
        for i in range(3):
            axes[i][j].grid(alpha=0.3)
        axes[0][j].legend(fontsize=7)
    fig.suptitle("Stability: injection x learning rate (dashed = diverged)")
    fig.tight_layout()
    figs = [_save(fig, fig_dir / "stability.png")]
    return StudyReport(result.points[0].name if result.points else "stability", "\n".join(md), figs, {})


def analyse_parcae_vs_gpt(result: SweepResult, fig_dir: Path, data: tuple[Path, Path]) -> StudyReport:
    rows = result.rows
    cols = [
        ("model", "model"),
        ("params", "params"),
        ("n_eff", "N_eff (unrolled, non-emb.)"),
        ("tokens", "tokens"),
        ("flops_actual", "train FLOPs"),
        ("train_seconds", "train s"),
        ("val_loss", "val loss"),
        ("val_bpb", "val bpb"),
    ]
    depth_keys = sorted(
        {k for r in rows for k in r if k.startswith("val_bpb_d")}, key=lambda k: int(k.split("_d")[-1])
    )
    cols += [(k, f"bpb T={k.split('_d')[-1]}") for k in depth_keys]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        curve = _curves(r["run_dir"])
        ax.plot(
            [c["tokens"] for c in curve],
            [c["loss"] for c in curve],
            label=f"{r['model']} (val bpb {r['val_bpb']:.3f})",
        )
    ax.set_xlabel("training tokens")
    ax.set_ylabel("train loss (nats/token)")
    ax.set_title("Parcae vs GPT: same unique parameters, same data, same tokens")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figs = [_save(fig, fig_dir / "parcae-vs-gpt.png")]
    return StudyReport("parcae-vs-gpt", _table(rows, cols), figs, {})


def analyse_scaling(result: SweepResult, fig_dir: Path, data: tuple[Path, Path]) -> StudyReport:
    from parcae_lm.scaling import plots

    rows = sorted(
        [r for r in result.rows if r.get("val_loss") is not None],
        key=lambda r: (r["flops"], r["mean_recurrence"]),
    )
    md = [
        _table(
            rows,
            [
                ("flops", "budget C"),
                ("mean_recurrence", "μ_rec"),
                ("mean_backprop_depth", "backprop depth"),
                ("flops_per_token", "FLOPs/token"),
                ("tokens", "tokens D"),
                ("steps", "steps"),
                ("n_eff", "N_eff"),
                ("val_loss", "val loss (T=μ_rec)"),
                ("val_bpb", "val bpb"),
            ],
        )
    ]
    figs, extra = [], {}
    table = F.RunTable(rows, "sweep")
    flops, loss = table.numeric(F.FLOPS), table.numeric(F.LOSS)
    for col in (F.MEAN_RECURRENCE, F.TOKENS):
        try:
            fit = fit_isoflop(flops, table.numeric(col), loss, variable=col, n_boot=1000, seed=0)
        except Exception as e:  # a fit that cannot be made is a finding, reported as such
            md.append(f"\n**{col}**: no iso-FLOP fit: {e}\n")
            continue
        md.append("\n" + report.markdown_isoflop(fit))
        extra[col] = fit.to_dict()
        figs.append(plots.plot_isoflop(fit, fig_dir / f"scaling-isoflop-{col}.png"))
        if fit.power_law.n_valid:
            figs.append(plots.plot_power_law(fit, fig_dir / f"scaling-powerlaw-{col}.png"))
    return StudyReport("scaling", "\n".join(md), figs, extra)


def depth_sweep(
    run_dirs: list[str], shard_dir: Path, depths: list[int], seq_len: int, max_tokens: int | None
) -> list[dict[str, Any]]:
    """Validation loss / bpb of each trained model at every test-time depth (one pass over the data)."""
    import torch

    from parcae_lm.checkpoint import from_pretrained
    from parcae_lm.eval.bpb import evaluate_bpb, shard_batches
    from parcae_lm.tokenizer import Tokenizer

    out = []
    for run_dir in run_dirs:
        model = from_pretrained(run_dir, device="cpu")
        token_bytes = torch.as_tensor(
            Tokenizer.load(Path(run_dir) / "tokenizer").token_bytes(), dtype=torch.long
        )
        batches = shard_batches(shard_dir, "val", seq_len, 16)
        results = evaluate_bpb(model, batches, token_bytes, depths=depths, max_tokens=max_tokens)
        for depth, res in zip(depths, results):
            out.append(
                {
                    F.MEAN_RECURRENCE: model.config.mean_recurrence,
                    F.NUM_STEPS: depth,
                    F.LOSS: res.loss,
                    "val_bpb": res.bits_per_byte,
                    "eval_tokens": res.num_tokens,
                    "run_dir": run_dir,
                }
            )
    return out


def analyse_test_time(
    result: SweepResult, fig_dir: Path, data: tuple[Path, Path], *, smoke: bool = False
) -> StudyReport:
    from parcae_lm.scaling import plots
    from parcae_lm.scaling.sweep import write_table

    depths = list(range(1, 17)) if not smoke else [1, 2, 3, 4, 6]
    seq_len = result.points[0].config.seq_len
    runs = [
        r["run_dir"] for r in sorted(result.rows, key=lambda r: r["mean_recurrence"]) if r["status"] == "ok"
    ]
    rows = depth_sweep(runs, data[1], depths, seq_len, max_tokens=None if smoke else 4096)
    tt_dir = result.out_dir / "testtime"
    tt_dir.mkdir(parents=True, exist_ok=True)
    write_table(rows, tt_dir)
    table = F.RunTable(rows, "testtime")
    fits = fit_test_time_groups(
        table.numeric(F.NUM_STEPS),
        table.numeric(F.LOSS),
        table.raw(F.MEAN_RECURRENCE),
        group_column=F.MEAN_RECURRENCE,
    )
    figs = [plots.plot_test_time(fits, fig_dir / "test-time.png")]
    mus = sorted({r[F.MEAN_RECURRENCE] for r in rows})
    grid = []
    for d in depths:
        line = {"T": d}
        for mu in mus:
            hit = next(r for r in rows if r[F.MEAN_RECURRENCE] == mu and r[F.NUM_STEPS] == d)
            line[f"mu{mu}"] = hit[F.LOSS]
            line[f"bpb{mu}"] = hit["val_bpb"]
        grid.append(line)
    cols = [("T", "T")]
    for mu in mus:
        cols += [(f"mu{mu}", f"loss μ={mu}"), (f"bpb{mu}", f"bpb μ={mu}")]
    md = [
        f"Validation loss (nats/token) and bpb at test-time depth T; {rows[0]['eval_tokens']} scored tokens "
        "per evaluation.\n",
        _table(grid, cols),
        "\n" + report.markdown_testtime(fits),
    ]
    extra = {"fits": fits.to_dict(), "depth_table": str(tt_dir / "results.csv")}
    return StudyReport("test-time", "\n".join(md), figs, extra)


@dataclass(frozen=True)
class Study:
    spec: Callable[[bool], SweepSpec]
    analyse: Callable[..., StudyReport]


STUDIES: dict[StudyName, Study] = {
    StudyName.STABILITY: Study(stability_spec, analyse_stability),
    StudyName.PARCAE_VS_GPT: Study(parcae_vs_gpt_spec, analyse_parcae_vs_gpt),
    StudyName.SCALING: Study(scaling_spec, analyse_scaling),
    StudyName.TEST_TIME: Study(test_time_spec, analyse_test_time),
}


def with_data(spec: SweepSpec, data: tuple[Path, Path]) -> SweepSpec:
    """The spec, training on the given (tokenizer_dir, shard_dir)."""
    spec.overrides = {**spec.overrides, "tokenizer_dir": str(data[0]), "shard_dir": str(data[1])}
    return spec


def run_study(
    name: StudyName,
    out_dir: str | Path,
    *,
    smoke: bool = False,
    fig_dir: str | Path | None = None,
    data: tuple[Path, Path] | None = None,
    progress: bool = True,
    overrides: dict[str, Any] | None = None,
) -> tuple[SweepResult, StudyReport]:
    """Run (or resume) a study's sweep, analyse it, and write report.md (+ figures) into `out_dir`.

    `overrides` (dotted keys, e.g. {"max_steps": 1800}) replace the preset's settings for every point;
    the study's axes themselves cannot be overridden."""
    study = STUDIES[StudyName(name)]
    data = data or study_data()
    spec = with_data(study.spec(smoke), data)
    if overrides:
        axis_keys = {k for axis in spec.axes for k in axis.keys}
        clash = sorted(set(overrides) & axis_keys)
        if clash:
            raise ConfigError(f"study {spec.name}: {', '.join(clash)} is an axis of the study, not a setting")
        budget_keys = {"max_steps", "max_tokens", "max_flops", "token_to_param_ratio", "max_time_minutes"}
        merged = dict(spec.overrides)
        if budget_keys & set(overrides):  # a new budget replaces the preset's
            merged = {k: v for k, v in merged.items() if k not in budget_keys}
        spec.overrides = {**merged, **overrides}
    out = Path(out_dir)
    result = run_sweep(spec, out, progress=progress)
    figs = Path(fig_dir) if fig_dir is not None else out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    if study.analyse is analyse_test_time:
        report = analyse_test_time(result, figs, data, smoke=smoke)
    else:
        report = study.analyse(result, figs, data)
    text = f"# Study {spec.name}: {spec.description}\n\nResults table: {result.csv}\n\n{report.markdown}\n"
    text += "".join(f"\n![{p.stem}]({p})\n" for p in report.figures)
    atomic_write_text(out / "report.md", text)
    if report.extra:
        atomic_write_text(out / "analysis.json", json.dumps(F.json_safe(report.extra), indent=2) + "\n")
    return result, report
