"""The results table the fits read: one run (or one evaluation) per row, as CSV or JSONL.

`parcae sweep` writes it (`write_table`), `parcae fit` reads it (`RunTable.read`). The column names the
fits expect by default:

    flops            nominal training-FLOP budget C (runs of one budget share the exact same value)
    mean_recurrence  μ_rec, the mean training recurrence
    tokens           training tokens D
    n_eff            effective (unrolled) parameter count N(μ_rec), see `laws.effective_params`
    num_steps        test-time recurrence T (test-time and unified laws)
    val_loss         validation loss L (at T = μ_rec for the iso-FLOP and parametric fits)
"""

from __future__ import annotations

import csv
import enum
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from parcae_lm.errors import ConfigError
from parcae_lm.files import atomic_write_text

FLOPS = "flops"
MEAN_RECURRENCE = "mean_recurrence"
TOKENS = "tokens"
N_EFF = "n_eff"
NUM_STEPS = "num_steps"
LOSS = "val_loss"


@dataclass
class RunTable:
    """Rows of a results table (CSV or JSONL), with checked numeric column access."""

    rows: list[dict[str, object]]
    source: str = "<records>"

    @classmethod
    def read(cls, path: str | Path) -> RunTable:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"results table {path} does not exist")
        suffix = path.suffix.lower()
        if suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                rows: list[dict[str, object]] = [dict(r) for r in csv.DictReader(f)]
        elif suffix in (".jsonl", ".ndjson"):
            rows = []
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ConfigError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
                    if not isinstance(row, dict):
                        raise ConfigError(f"{path}:{lineno}: expected a JSON object per line")
                    rows.append(row)
        else:
            raise ConfigError(f"results table {path}: expected a .csv or .jsonl file, got '{suffix}'")
        if not rows:
            raise ConfigError(f"results table {path} has no rows")
        return cls(rows, str(path))

    @property
    def columns(self) -> list[str]:
        seen: dict[str, None] = {}
        for row in self.rows:
            seen.update(dict.fromkeys(row))
        return list(seen)

    def has(self, name: str) -> bool:
        return any(name in row for row in self.rows)

    def raw(self, name: str) -> list[object]:
        self._check(name)
        return [row.get(name) for row in self.rows]

    def numeric(self, name: str) -> np.ndarray:
        """Column `name` as float64; every row must hold a finite number."""
        self._check(name)
        out = np.empty(len(self.rows))
        for i, row in enumerate(self.rows):
            value = row.get(name)
            try:
                if value is None or value == "" or isinstance(value, bool):
                    raise ValueError
                out[i] = float(value)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise ConfigError(
                    f"{self.source}: row {i + 1}, column '{name}': expected a number, got {value!r}"
                ) from None
            if not math.isfinite(out[i]):
                raise ConfigError(f"{self.source}: row {i + 1}, column '{name}' is {out[i]} (not finite)")
        return out

    def _check(self, name: str) -> None:
        if not self.has(name):
            raise ConfigError(
                f"{self.source}: missing column '{name}' (columns present: {', '.join(self.columns)})"
            )


def positive(name: str, values: Sequence[float] | np.ndarray, n: int | None = None) -> np.ndarray:
    """Column `name` as a 1-D float array of finite positive values (the fits take their logarithm)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ConfigError(f"'{name}' must be one-dimensional, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ConfigError(f"'{name}' has {arr.shape[0]} values but the other columns have {n}")
    if not np.all(np.isfinite(arr)):
        raise ConfigError(
            f"'{name}' has non-finite values at rows {np.flatnonzero(~np.isfinite(arr)).tolist()}"
        )
    if np.any(arr <= 0):
        bad = np.flatnonzero(arr <= 0)
        raise ConfigError(
            f"'{name}' must be positive (it is used in a logarithm); rows {bad.tolist()} hold {arr[bad].tolist()}"
        )
    return arr


def write_table(rows: list[dict[str, Any]], out_dir: Path) -> tuple[Path, Path]:
    """`out_dir`/results.csv and results.jsonl (same rows; the CSV has the union of columns, first-seen
    order). Non-finite numbers are written as empty cells / null."""
    columns: dict[str, None] = {}
    for r in rows:
        columns.update(dict.fromkeys(r))
    clean = [
        {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
        for r in rows
    ]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for r in clean:
        writer.writerow({k: _csv_cell(r.get(k)) for k in columns})
    csv_path, jsonl_path = out_dir / "results.csv", out_dir / "results.jsonl"
    atomic_write_text(csv_path, buf.getvalue())
    atomic_write_text(jsonl_path, "".join(json.dumps(r, default=json_default) + "\n" for r in clean))
    return csv_path, jsonl_path


def _csv_cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, enum.Enum):
        return v.value
    if isinstance(v, list | dict):
        return json.dumps(v)
    return v


def json_default(v: Any) -> Any:
    """`json.dumps(default=...)` for the values a table or sweep plan holds besides JSON's own (enums)."""
    if isinstance(v, enum.Enum):
        return v.value
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def json_safe(obj: Any) -> Any:
    """NaN/inf are not JSON; write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj
