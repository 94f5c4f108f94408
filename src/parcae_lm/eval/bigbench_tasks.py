"""DCLM's records for the BIG-bench tasks, rendered from the `task.json` files of the bigbench sdist.

DCLM's BIG-bench files follow three rules, reproduced here:

- prompt: a language-modelling task's context is `task_prefix + example_input_prefix + input +
  example_output_prefix`, stripped (BIG-bench's default prefixes "\\nQ: " / "\\nA: " where unset);
  the continuation is `target` (its first entry for a list) or the top-scored `target_scores` key.
- order: every (sub)task's records are deduplicated and shuffled with `random.Random(42)`; a task
  with subtasks lists the first 80% (rounded up) of each subtask in name order, then the rest of each.
- language_identification lists 4 lettered options (the answer and 3 of the 10 other languages)
  and scores the letter. Which 3 languages and which letter DCLM drew is not in the raw data; they are
  drawn here with a fixed seed, so the records are DCLM's in structure but not option for option.

Core-Extended's other multiple-choice tasks keep BIG-bench's own option sets (see docs/evaluation.md
for how far that is from DCLM's files).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from parcae_lm.errors import DataError
from parcae_lm.eval.bundle import LETTERS, Example, LMExample, MCExample, lettered

# BIG-bench's own defaults when a task.json does not set its prefixes.
_BB_INPUT_PREFIX, _BB_OUTPUT_PREFIX = "\nQ: ", "\nA: "
ORDER_SEED = 42  # DCLM's shuffle of every BIG-bench (sub)task
HEAD_FRACTION = 0.8  # a subtask's first part, listed before the other subtasks' rest


def dclm_order(parts: Sequence[Sequence[Example]]) -> list[Example]:
    """DCLM's order of a task's records, given each subtask's records (in subtask-name order)."""
    heads: list[Example] = []
    tails: list[Example] = []
    for part in parts:
        records = list(dict.fromkeys(part))  # drop exact duplicates, keep the first
        random.Random(ORDER_SEED).shuffle(records)
        cut = math.ceil(HEAD_FRACTION * len(records))
        heads += records[:cut]
        tails += records[cut:]
    return heads + tails


def _best(scores: dict[str, float]) -> int:
    """Index of the first top-scored option."""
    best = max(scores.values())
    return next(i for i, v in enumerate(scores.values()) if v == best)


@dataclass(frozen=True)
class BigBenchRecipe:
    """How one DCLM BIG-bench task is made from task.json files.

    `multiple_choice`: choices = `target_scores` keys; else a language-modelling task. `with_task_prefix`
    puts `task_prefix` before a multiple-choice prompt (language-modelling prompts always have it).
    `letters`: DCLM lists this many options as "A. ..." lines after the input and scores the letter.
    """

    task_dir: str
    multiple_choice: bool
    with_task_prefix: bool = False
    letters: int = 0

    def subtasks(self, tasks: dict[str, dict]) -> list[str]:
        rels = sorted(r for r in tasks if r == self.task_dir or r.startswith(self.task_dir + "/"))
        return [r for r in rels if tasks[r].get("examples")]

    def render(self, rel: str, task: dict) -> list[Example]:
        inp = task.get("example_input_prefix", _BB_INPUT_PREFIX)
        outp = task.get("example_output_prefix", _BB_OUTPUT_PREFIX)
        prefix = task.get("task_prefix", "")
        out: list[Example] = []
        for ex in task["examples"]:
            scores = ex.get("target_scores")
            if self.multiple_choice:
                if not scores:
                    raise DataError(f"BIG-bench {rel}: multiple-choice example without target_scores")
                head = (prefix if self.with_task_prefix else "") + inp + ex["input"]
                # lettered: the options and "Answer: " are added once the order is fixed
                prompt = head.rstrip() if self.letters else (head + outp).strip()
                out.append(MCExample(prompt, tuple(scores), _best(scores)))
            else:
                target = ex.get("target")
                if isinstance(target, list):
                    target = target[0]
                if target is None:
                    if not scores:
                        raise DataError(f"BIG-bench {rel}: example without target or target_scores")
                    target = max(scores, key=scores.__getitem__)
                out.append(LMExample((prefix + inp + ex["input"] + outp).strip(), str(target).strip()))
        return out

    def build(self, tasks: dict[str, dict], label: str) -> list[Example]:
        rels = self.subtasks(tasks)
        if not rels:
            raise DataError(f"BIG-bench task {self.task_dir}: no examples")
        records = dclm_order([self.render(rel, tasks[rel]) for rel in rels])
        if self.letters:
            rng = random.Random(f"parcae-lm/{label}")  # a str seed is hashed the same on every platform
            records = [_lettered(ex, self.letters, rng, label) for ex in records]  # type: ignore[arg-type]
        return records


def _lettered(ex: MCExample, k: int, rng: random.Random, label: str) -> MCExample:
    """The gold and k - 1 other options drawn with `rng`, in random order, listed as "A. ..." lines."""
    if len(ex.choices) < k:
        raise DataError(
            f"{label}: an example has {len(ex.choices)} options; DCLM's format needs at least {k} options"
        )
    others = [c for i, c in enumerate(ex.choices) if i != ex.gold]
    options = rng.sample(others, k - 1)
    gold = rng.randrange(k)
    options.insert(gold, ex.choices[ex.gold])
    return MCExample(f"{ex.query}\n{lettered(options)}Answer: ", tuple(LETTERS[:k]), gold)


BIGBENCH_RECIPES: dict[str, BigBenchRecipe] = {
    "bigbench_qa_wikidata": BigBenchRecipe("qa_wikidata", multiple_choice=False),
    "bigbench_dyck_languages": BigBenchRecipe("dyck_languages", multiple_choice=False),
    "bigbench_cs_algorithms": BigBenchRecipe("cs_algorithms", multiple_choice=False),
    "bigbench_operators": BigBenchRecipe("operators", multiple_choice=False),
    "bigbench_repeat_copy_logic": BigBenchRecipe("repeat_copy_logic", multiple_choice=False),
    "bigbench_language_identification": BigBenchRecipe(
        "language_identification", multiple_choice=True, with_task_prefix=True, letters=4
    ),
    "bigbench_misconceptions": BigBenchRecipe("misconceptions", multiple_choice=True, with_task_prefix=True),
    "bigbench_novel_concepts": BigBenchRecipe("novel_concepts", multiple_choice=True),
    "bigbench_strange_stories": BigBenchRecipe("strange_stories", multiple_choice=True),
    "bigbench_strategy_qa": BigBenchRecipe("strategyqa", multiple_choice=True),
    "bigbench_conlang_translation": BigBenchRecipe("conlang_translation", multiple_choice=False),
    "bigbench_conceptual_combinations": BigBenchRecipe("conceptual_combinations", multiple_choice=True),
    "bigbench_elementary_math_qa": BigBenchRecipe("elementary_math_qa", multiple_choice=True),
    "bigbench_logical_deduction": BigBenchRecipe("logical_deduction", multiple_choice=True),
    "bigbench_understanding_fables": BigBenchRecipe("understanding_fables", multiple_choice=True),
}
