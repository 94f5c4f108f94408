"""CORE scoring on hand-made task files with a model whose logits the test controls."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from parcae_lm.errors import EvalError
from parcae_lm.eval.bundle import LMExample, MCExample, SchemaExample, load_bundle
from parcae_lm.eval.core import (
    SuiteScore,
    TaskScore,
    evaluate_suite,
    fewshot_indices,
    render_prompts,
    score_rows,
    shuffled,
    task_rows,
)
from parcae_lm.eval.tasks import CORE_TASKS, TASKS_BY_LABEL, Suite
from test_eval_fakes import BigramModel, ByteTokenizer, RandomLM, write_bundle

TOK = ByteTokenizer()
CR, LU = "commonsense_reasoning/", "language_understanding/"


def _bundle(tmp_path, copa, wino, lamb, shots=(0, 0, 0)):
    return load_bundle(
        write_bundle(
            tmp_path,
            {
                "copa": (CR + "copa.jsonl", "multiple_choice", shots[0], " ", 50, copa),
                "winogrande": (LU + "winogrande.jsonl", "schema", shots[1], " ", 50, wino),
                "lambada_openai": (LU + "lambada_openai.jsonl", "language_modeling", shots[2], " ", 0, lamb),
            },
        )
    )


COPA = [
    {"query": "my pet is a", "choices": ["cat", "dog"], "gold": 0},
    {"query": "her pet is a", "choices": ["cat", "dog"], "gold": 0},
    {"query": "his pet is a", "choices": ["dog", "cat"], "gold": 1},
    {"query": "our pet is a", "choices": ["cat", "dog"], "gold": 1},  # the model says cat: wrong
]
WINO = [
    {"context_options": ["the sun", "the moo"], "continuation": "is hot", "gold": 0},
    {"context_options": ["the moo", "the sun"], "continuation": "is hot", "gold": 1},
]
LAMB = [
    {"context": "count: pqr", "continuation": "xyz"},
    {"context": "count: pqr", "continuation": "xyq"},  # greedy gives xyz: wrong
    {"context": "count: pqr", "continuation": "xyzw"},  # greedy stops matching at w: wrong
]


def _taught(mean_recurrence: int | None = None) -> BigramModel:
    # MC: after "... a", " cat" is likely and " dog" is not. Schema: only the shared continuation
    # " is hot" is scored, and its first byte is predicted from the option's last byte ('n' of "sun").
    # LM: after "pqr", greedy decoding produces " xyz" (strength 20 beats every other ' '->x pair).
    model = BigramModel(mean_recurrence=mean_recurrence)
    return model.teach("a cat").teach("n is hot").teach("pqr xyz", strength=20.0)


def test_fewshot_indices_equal_naive_sample():
    for n, k, seed in [(2, 1, 1234), (7, 3, 2345), (60, 10, 3456), (5, 10, 1)]:
        for idx in range(n):
            naive = random.Random(seed + idx).sample([i for i in range(n) if i != idx], min(k, n - 1))
            got = fewshot_indices(n, idx, k, seed)
            assert got == naive
            assert idx not in got and len(set(got)) == len(got)


def test_render_prompts_formats():
    mc = MCExample("Question: 2+2?", ("3", "4"), 1)
    shot = MCExample("Question: 1+1?", ("2", "5"), 0)
    assert render_prompts(mc, "\nAnswer: ", [shot]) == [
        "Question: 1+1?\nAnswer: 2\n\nQuestion: 2+2?\nAnswer: 3",
        "Question: 1+1?\nAnswer: 2\n\nQuestion: 2+2?\nAnswer: 4",
    ]
    sc = SchemaExample(("A went", "B went"), "home.", 0)
    assert render_prompts(sc, " ", [SchemaExample(("X ran", "Y ran"), "away.", 1)]) == [
        "Y ran away.\n\nA went home.",
        "Y ran away.\n\nB went home.",
    ]
    lm = LMExample("  Capital of France? ", "Paris")
    assert render_prompts(lm, " ", [LMExample("Capital of Italy?", "Rome")]) == [
        "Capital of Italy? Rome\n\nCapital of France?",
        "Capital of Italy? Rome\n\nCapital of France? Paris",
    ]


def test_mc_schema_lm_accuracy_with_controlled_logits(tmp_path):
    wino = [
        {"context_options": ["it was the sun", "it was the moo"], "continuation": "is hot", "gold": 0},
        {"context_options": ["it was the moo", "it was the sun"], "continuation": "is hot", "gold": 1},
        {"context_options": ["it was the sun", "it was the moo"], "continuation": "is hot", "gold": 1},
    ]
    bundle = _bundle(tmp_path, COPA, wino, LAMB)
    [score] = evaluate_suite(_taught(), TOK, bundle, Suite.CORE, seeds=[1234], batch_size=3)
    acc = {label: t.accuracy[1234] for label, t in score.tasks.items()}
    assert acc == pytest.approx({"copa": 0.75, "winogrande": 2 / 3, "lambada_openai": 1 / 3})
    # centred: (acc - b)/(1 - b); CORE = mean over evaluated CORE tasks
    centered = {"copa": 0.5, "winogrande": 1 / 3, "lambada_openai": 1 / 3}
    for label, c in centered.items():
        assert score.tasks[label].centered(1234) == pytest.approx(c)
    out = score.to_json()
    assert out["core_metric"] == pytest.approx(sum(centered.values()) / 3)
    assert out["core_tasks_evaluated"] == ["copa", "lambada_openai", "winogrande"]
    # the 19 CORE tasks the bundle lacks are reported, not silently dropped
    assert set(out["missing"]) == {t.label for t in CORE_TASKS} - set(centered)


def test_centering_and_seed_aggregation():
    t1 = TaskScore("boolq", 62.0, 10, {1: 0.62, 2: 0.81})
    t2 = TaskScore("jeopardy", 0.0, 10, {1: 0.2, 2: 0.4})
    assert t1.centered(1) == pytest.approx(0.0)
    assert t1.centered(2) == pytest.approx((0.81 - 0.62) / 0.38)
    assert TASKS_BY_LABEL["boolq"].centered(0.0) == pytest.approx(-0.62 / 0.38)
    s = SuiteScore(Suite.CORE_EXTENDED, "4", [1, 2], {"boolq": t1, "jeopardy": t2}, {})
    per_seed = [(0.0 + 0.2) / 2, (0.5 + 0.4) / 2]
    out = s.to_json()
    assert out["core_metric"] == pytest.approx(sum(per_seed) / 2)
    assert out["core_metric_std"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / 2)  # population std
    assert out["tasks"]["jeopardy"]["accuracy_std"] == pytest.approx(0.1)
    assert out["core_extended_metric"] == pytest.approx(out["core_metric"])


def _naive_row_score(model, row):
    ids = torch.tensor([row.tokens])
    logits = model(ids)["logits"][0]
    targets = ids[0, row.start : row.end]
    pred = logits[row.start - 1 : row.end - 1]
    return F.cross_entropy(pred, targets).item(), bool((pred.argmax(-1) == targets).all())


def test_batched_scoring_equals_one_by_one_with_truncation():
    model = RandomLM(block_size=48)
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "épée", "日本"]
    pool = [
        MCExample(
            " ".join(rng.choices(words, k=rng.randint(2, 12))), tuple(rng.sample(words, 3)), rng.randint(0, 2)
        )
        for _ in range(12)
    ]
    spec = TASKS_BY_LABEL["commonsense_qa"]  # 10-shot MC: prompts far longer than block_size 48
    rows = task_rows(spec, pool, len(pool), 1234, TOK, model.config.block_size)
    assert all(len(r.tokens) <= 48 and 1 <= r.start < r.end <= len(r.tokens) for r in rows)
    for bs in (1, 5):
        losses, greedy = score_rows(model, rows, num_steps=None, batch_size=bs, pad_id=TOK.pad_id)
        for r, lo, g in zip(rows, losses, greedy):
            ref_loss, ref_greedy = _naive_row_score(model, r)
            assert lo == pytest.approx(ref_loss, rel=1e-4, abs=1e-5)
            assert g == ref_greedy


def test_depth_sweep_passes_num_steps_and_is_deterministic(tmp_path):
    bundle = _bundle(tmp_path, COPA, WINO, LAMB, shots=(2, 1, 1))
    looped = _taught(mean_recurrence=4)
    scores = evaluate_suite(
        looped, TOK, bundle, Suite.CORE, depths=[1, 3], seeds=[1234, 2345], max_per_task=2
    )
    assert {c["num_steps"] for c in looped.calls} == {1, 3}
    again = evaluate_suite(looped, TOK, bundle, Suite.CORE, depths=[1, 3], seeds=[1234, 2345], max_per_task=2)
    assert [s.to_json() for s in scores] == [s.to_json() for s in again]
    assert all(t.num_examples == 2 for t in scores[0].tasks.values())
    gpt = BigramModel().teach("a cat")
    evaluate_suite(gpt, TOK, bundle, Suite.CORE, seeds=[1], tasks=["copa"])  # fake asserts num_steps is None
    assert all(c["num_steps"] is None for c in gpt.calls)


def test_max_per_task_scores_the_same_prompts_as_a_full_run():
    pool = shuffled([MCExample(f"q{i}", ("a", "b"), i % 2) for i in range(30)])
    spec = TASKS_BY_LABEL["hellaswag"]
    full = task_rows(spec, pool, 30, 2345, TOK, 4096)
    part = task_rows(spec, pool, 5, 2345, TOK, 4096)
    assert [r.tokens for r in part] == [r.tokens for r in full if r.example < 5]
    other_seed = task_rows(spec, pool, 5, 3456, TOK, 4096)
    assert [r.tokens for r in part] != [r.tokens for r in other_seed]  # the seed changes the few-shot draw


def test_bad_arguments_raise_eval_error(tmp_path):
    bundle = _bundle(tmp_path, COPA, WINO, LAMB)
    model = BigramModel()
    with pytest.raises(EvalError, match="max_per_task"):
        evaluate_suite(model, TOK, bundle, Suite.CORE, max_per_task=0)
    with pytest.raises(EvalError, match="unknown task"):
        evaluate_suite(model, TOK, bundle, Suite.CORE, tasks=["mmlu_fewshot"])
