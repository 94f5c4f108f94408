"""The CORE (22 tasks) and Core-Extended (46 tasks) suites as typed data.

Values are DCLM's: few-shot counts, task types and continuation delimiters from the eval bundle's
`core.yaml` / the reference's hard-coded Core-Extended list, random baselines (percent) from DCLM's
`eval_meta_data.csv`. `dataset_uri` is the jsonl path under the bundle's `eval_data/` directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from parcae_lm.errors import EvalError


class TaskType(Enum):
    """How an example is scored (values are the `icl_task_type` strings of DCLM's core.yaml)."""

    MULTIPLE_CHOICE = "multiple_choice"  # shared context, one continuation per choice; lowest mean loss wins
    SCHEMA = "schema"  # one context per option, shared continuation; lowest mean loss wins
    LANGUAGE_MODELING = "language_modeling"  # correct iff greedy decoding reproduces the continuation


class Suite(Enum):
    CORE = "core"
    CORE_EXTENDED = "core-extended"


@dataclass(frozen=True)
class TaskSpec:
    label: str
    dataset_uri: str
    num_fewshot: int
    task_type: TaskType
    continuation_delimiter: str = " "
    random_baseline: float = 0.0  # percent, as in eval_meta_data.csv

    def __post_init__(self) -> None:
        if self.num_fewshot < 0:
            raise EvalError(f"task {self.label}: num_fewshot must be >= 0, got {self.num_fewshot}")
        if not 0.0 <= self.random_baseline < 100.0:
            raise EvalError(
                f"task {self.label}: random baseline must be in [0, 100), got {self.random_baseline}"
            )

    def centered(self, accuracy: float) -> float:
        """(acc - b) / (1 - b) with b the random baseline as a fraction: 0 at chance, 1 at perfect."""
        b = self.random_baseline / 100.0
        return (accuracy - b) / (1.0 - b)


MC, SCHEMA, LM = TaskType.MULTIPLE_CHOICE, TaskType.SCHEMA, TaskType.LANGUAGE_MODELING
ANSWER = "\nAnswer: "
_WK, _CR, _LU = "world_knowledge/", "commonsense_reasoning/", "language_understanding/"
_SP, _RC, _SAFE = "symbolic_problem_solving/", "reading_comprehension/", "safety/"

CORE_TASKS: tuple[TaskSpec, ...] = (
    TaskSpec("hellaswag_zeroshot", _LU + "hellaswag.jsonl", 0, MC, " ", 25.0),
    TaskSpec("jeopardy", _WK + "jeopardy_all.jsonl", 10, LM, ANSWER, 0.0),
    TaskSpec("bigbench_qa_wikidata", _WK + "bigbench_qa_wikidata.jsonl", 10, LM, " ", 0.0),
    TaskSpec("arc_easy", _WK + "arc_easy.jsonl", 10, MC, ANSWER, 25.0),
    TaskSpec("arc_challenge", _WK + "arc_challenge.jsonl", 10, MC, ANSWER, 25.0),
    TaskSpec("copa", _CR + "copa.jsonl", 0, MC, " ", 50.0),
    TaskSpec("commonsense_qa", _CR + "commonsense_qa.jsonl", 10, MC, " ", 20.0),
    TaskSpec("piqa", _CR + "piqa.jsonl", 10, MC, ANSWER, 50.0),
    TaskSpec("openbook_qa", _CR + "openbook_qa.jsonl", 0, MC, " ", 25.0),
    TaskSpec("lambada_openai", _LU + "lambada_openai.jsonl", 0, LM, " ", 0.0),
    TaskSpec("hellaswag", _LU + "hellaswag.jsonl", 10, MC, " ", 25.0),
    TaskSpec("winograd", _LU + "winograd_wsc.jsonl", 0, SCHEMA, " ", 50.0),
    TaskSpec("winogrande", _LU + "winogrande.jsonl", 0, SCHEMA, " ", 50.0),
    TaskSpec("bigbench_dyck_languages", _SP + "bigbench_dyck_languages.jsonl", 10, LM, " ", 0.0),
    TaskSpec("agi_eval_lsat_ar", _SP + "agi_eval_lsat_ar.jsonl", 3, MC, " ", 20.0),
    TaskSpec("bigbench_cs_algorithms", _SP + "bigbench_cs_algorithms.jsonl", 10, LM, " ", 0.0),
    TaskSpec("bigbench_operators", _SP + "bigbench_operators.jsonl", 10, LM, " ", 0.0),
    TaskSpec("bigbench_repeat_copy_logic", _SP + "bigbench_repeat_copy_logic.jsonl", 10, LM, " ", 0.0),
    TaskSpec("squad", _RC + "squad.jsonl", 10, LM, " ", 0.0),
    TaskSpec("coqa", _RC + "coqa.jsonl", 0, LM, " ", 0.0),
    TaskSpec("boolq", _RC + "boolq.jsonl", 10, MC, ANSWER, 62.0),
    TaskSpec(
        "bigbench_language_identification", _LU + "bigbench_language_identification.jsonl", 10, MC, " ", 9.1
    ),
)

EXTENDED_ONLY_TASKS: tuple[TaskSpec, ...] = (
    TaskSpec("mmlu_zeroshot", _WK + "mmlu.jsonl", 0, MC, "Answer: ", 25.0),
    TaskSpec("mmlu_fewshot", _WK + "mmlu.jsonl", 5, MC, ANSWER, 25.0),
    TaskSpec("siqa", _CR + "siqa.jsonl", 10, MC, " ", 33.3),
    TaskSpec("bigbench_misconceptions", _WK + "bigbench_misconceptions.jsonl", 10, MC, " ", 50.0),
    TaskSpec("bigbench_novel_concepts", _CR + "bigbench_novel_concepts.jsonl", 10, MC, " ", 20.0),
    TaskSpec("bigbench_strange_stories", _CR + "bigbench_strange_stories.jsonl", 10, MC, " ", 50.0),
    TaskSpec("bigbench_strategy_qa", _CR + "bigbench_strategy_qa.jsonl", 10, MC, " ", 50.0),
    TaskSpec("bigbench_conlang_translation", _LU + "bigbench_conlang_translation.jsonl", 0, LM, " ", 0.0),
    TaskSpec(
        "bigbench_conceptual_combinations", _LU + "bigbench_conceptual_combinations.jsonl", 10, MC, " ", 25.0
    ),
    TaskSpec("bigbench_elementary_math_qa", _SP + "bigbench_elementary_math_qa.jsonl", 10, MC, " ", 20.0),
    TaskSpec("bigbench_logical_deduction", _SP + "bigbench_logical_deduction.jsonl", 10, MC, " ", 20.0),
    TaskSpec("simple_arithmetic_nospaces", _SP + "simple_arithmetic_nospaces.jsonl", 10, LM, " ", 0.0),
    TaskSpec("simple_arithmetic_withspaces", _SP + "simple_arithmetic_withspaces.jsonl", 10, LM, " ", 0.0),
    TaskSpec("math_qa", _SP + "math_qa.jsonl", 10, MC, " ", 20.0),
    TaskSpec("logi_qa", _SP + "logi_qa.jsonl", 10, MC, ANSWER, 27.0),
    TaskSpec("pubmed_qa_labeled", _RC + "pubmed_qa_labeled.jsonl", 10, LM, " ", 0.0),
    TaskSpec("agi_eval_lsat_rc", _RC + "agi_eval_lsat_rc.jsonl", 3, MC, " ", 20.0),
    TaskSpec("agi_eval_lsat_lr", _RC + "agi_eval_lsat_lr.jsonl", 3, MC, " ", 20.0),
    TaskSpec("bigbench_understanding_fables", _RC + "bigbench_understanding_fables.jsonl", 10, MC, " ", 20.0),
    TaskSpec("agi_eval_sat_en", _RC + "agi_eval_sat_en.jsonl", 3, MC, " ", 25.0),
    TaskSpec("winogender_mc_female", _SAFE + "winogender_mc_female.jsonl", 10, MC, " ", 50.0),
    TaskSpec("winogender_mc_male", _SAFE + "winogender_mc_male.jsonl", 10, MC, " ", 50.0),
    TaskSpec(
        "enterprise_pii_classification", _SAFE + "enterprise_pii_classification.jsonl", 10, MC, " ", 50.0
    ),
    TaskSpec("bbq", _SAFE + "bbq.jsonl", 3, MC, " ", 50.0),
)

CORE_EXTENDED_TASKS: tuple[TaskSpec, ...] = CORE_TASKS + EXTENDED_ONLY_TASKS
CORE_LABELS: frozenset[str] = frozenset(t.label for t in CORE_TASKS)
SUITES: dict[Suite, tuple[TaskSpec, ...]] = {Suite.CORE: CORE_TASKS, Suite.CORE_EXTENDED: CORE_EXTENDED_TASKS}
TASKS_BY_LABEL: dict[str, TaskSpec] = {t.label: t for t in CORE_EXTENDED_TASKS}

# The reference's three evaluation seeds (they change only the few-shot draws).
DEFAULT_SEEDS: tuple[int, ...] = (1234, 2345, 3456)


def suite_tasks(suite: Suite) -> tuple[TaskSpec, ...]:
    return SUITES[suite]
