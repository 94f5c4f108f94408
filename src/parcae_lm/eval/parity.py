"""How close a bundle's task files are to a reference set of DCLM task files, record by record.

The reference is a directory laid out like a bundle's `eval_data/` (DCLM's eval_bundle.zip, or
llm-foundry's `scripts/eval/local_data`, which DCLM's bundle copies). Per task:

- identical: records present in both (as a multiset: a record twice in one file and once in the other
  counts once), as a share of the reference's records;
- same position: records identical at the same line, which is what makes the fixed `Random(1337)`
  shuffle, `--max-per-task` subsamples and few-shot draws pick the same examples as on DCLM's files.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from parcae_lm.eval.bundle import EvalBundle, read_examples
from parcae_lm.eval.tasks import TaskSpec


@dataclass(frozen=True)
class TaskParity:
    label: str
    dataset_uri: str
    ours: int | None  # records in the bundle (None: the bundle lacks the task)
    reference: int | None  # records in the reference (None: the reference lacks the file)
    identical: int | None
    same_position: int | None

    @property
    def compared(self) -> bool:
        return self.ours is not None and self.reference is not None

    def share(self, count: int | None) -> float | None:
        return None if count is None or not self.reference else count / self.reference

    def to_dict(self) -> dict:
        return asdict(self) | {
            "identical_share": self.share(self.identical),
            "same_position_share": self.share(self.same_position),
        }


def compare_task(spec: TaskSpec, bundle: EvalBundle, reference: Path) -> TaskParity:
    ours_path, ref_path = bundle.data_dir / spec.dataset_uri, Path(reference) / spec.dataset_uri
    ours = read_examples(ours_path, spec.task_type) if ours_path.is_file() else None
    theirs = read_examples(ref_path, spec.task_type) if ref_path.is_file() else None
    if ours is None or theirs is None:
        return TaskParity(
            spec.label,
            spec.dataset_uri,
            None if ours is None else len(ours),
            None if theirs is None else len(theirs),
            None,
            None,
        )
    identical = sum((Counter(ours) & Counter(theirs)).values())
    same_position = sum(a == b for a, b in zip(ours, theirs))
    return TaskParity(spec.label, spec.dataset_uri, len(ours), len(theirs), identical, same_position)


def compare_bundle(bundle: EvalBundle, reference: Path, specs: Sequence[TaskSpec]) -> list[TaskParity]:
    """One `TaskParity` per task of `specs` (core.yaml's dataset path where the bundle lists the task)."""
    return [compare_task(bundle.icl_tasks.get(s.label, s), bundle, reference) for s in specs]


def markdown_parity(rows: Sequence[TaskParity]) -> str:
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}%"

    lines = [
        "| task | records (ours) | records (DCLM) | identical | same position |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        ours = "not built" if r.ours is None else f"{r.ours:,}"
        ref = "not in reference" if r.reference is None else f"{r.reference:,}"
        lines.append(
            f"| {r.label} | {ours} | {ref} | {pct(r.share(r.identical))} | {pct(r.share(r.same_position))} |"
        )
    return "\n".join(lines) + "\n"
