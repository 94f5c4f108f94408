"""The synthetic reasoning tasks: answers checked by independent solvers, difficulty means what it says,
generation is deterministic, test problems never reach training, batches and resume are exact."""

from __future__ import annotations

import pytest
import torch

from parcae_lm.config.train import ReasoningTask, RunConfig, TrainArgs, load_run_config
from parcae_lm.data.reasoning import (
    CHASE_ROOTS,
    CHASE_VARIABLES,
    IGNORE_INDEX,
    TASKS,
    Example,
    ReasoningLoader,
    collate,
    example,
    example_length,
    held_out_problems,
    min_seq_len,
    reasoning_tokenizer,
    sample_problems,
)
from parcae_lm.errors import ConfigError, DataError
from parcae_lm.tokenizer import Tokenizer


def solve_chase(prompt: str) -> tuple[str, int]:
    """(answer, copies followed) by following the assignments from the query."""
    body, query = prompt.split("?")
    env = dict(s.split("=") for s in body.split(","))
    name, hops = query, 0
    while not env[name].isdigit():
        name, hops = env[name], hops + 1
    return env[name], hops


def solve_add(prompt: str) -> tuple[str, int]:
    a, b = prompt.rstrip("=").split("+")
    return f"{int(a) + int(b):0{len(a) + 1}d}", len(a)


def solve_swaps(prompt: str) -> tuple[str, int]:
    start, moves = prompt.rstrip("?").split("|")
    ball = start
    for a, b in moves.split(","):
        ball = b if ball == a else a if ball == b else ball
    return ball, len(moves.split(","))


SOLVERS = {ReasoningTask.chase: solve_chase, ReasoningTask.add: solve_add, ReasoningTask.swaps: solve_swaps}


@pytest.mark.parametrize("task", list(ReasoningTask))
def test_every_answer_is_what_an_independent_solver_finds_at_the_stated_difficulty(task):
    spec = TASKS[task]
    for d in spec.test_difficulties:
        for i in range(30):
            ex = example(task, d, 7, i)
            assert SOLVERS[task](ex.prompt) == (ex.answer, d), ex
            assert ex.task == task and ex.difficulty == d


def test_every_task_is_registered_with_train_difficulties_below_its_hardest_test_ones():
    assert set(TASKS) == set(ReasoningTask)
    for spec in TASKS.values():
        assert spec.test[0] <= spec.train[0] <= spec.train[1] < spec.test[1]
        assert spec.test[1] >= 2 * spec.train[1]  # extrapolation to twice the trained difficulty


def test_chase_prompts_show_neither_length_nor_digits_that_depend_on_the_difficulty():
    """Difficulty is not on the surface: every chase prompt has the same length and CHASE_ROOTS distinct
    digits, the answer among them; every variable is assigned once and the query is never referenced."""
    lengths = set()
    for d in TASKS[ReasoningTask.chase].test_difficulties:
        for i in range(30):
            ex = example(ReasoningTask.chase, d, 3, i)
            body, query = ex.prompt.split("?")
            stmts = [s.split("=") for s in body.split(",")]
            digits = [v for _, v in stmts if v.isdigit()]
            assert len(stmts) == CHASE_VARIABLES and len({n for n, _ in stmts}) == CHASE_VARIABLES
            assert len(digits) == len(set(digits)) == CHASE_ROOTS and ex.answer in digits
            assert query not in {v for _, v in stmts}
            lengths.add(len(ex.prompt))
    assert len(lengths) == 1


def test_generation_is_a_pure_function_of_its_seed():
    assert example("add", 5, 1, 2, 3) == example("add", 5, 1, 2, 3)
    assert len({example("swaps", 6, 1, i).prompt for i in range(20)}) > 15
    assert example("chase", 3, 1, 0) != example("chase", 3, 2, 0)
    assert held_out_problems(["swaps", "add"], 5) == held_out_problems(["swaps", "add"], 5)
    # a task's test problems do not depend on which other tasks are evaluated with it
    assert held_out_problems(["add"], 5) == [
        e for e in held_out_problems(["chase", "add"], 5) if e.task == "add"
    ]


def test_held_out_problems_are_distinct_per_cell_and_cover_every_test_difficulty():
    probs = held_out_problems(list(ReasoningTask), 40)
    for task, spec in TASKS.items():
        for d in spec.test_difficulties:
            cell = [e.prompt for e in probs if e.task == task and e.difficulty == d]
            assert len(cell) == len(set(cell)) == 40
    # the smallest cells have few problems at all: 10 x 10 one-digit sums
    assert len(held_out_problems(["add"], 150, {ReasoningTask.add: [1]})) == 100


def test_unknown_task_and_bad_difficulty_are_clear_errors():
    with pytest.raises(ValueError, match="nope"):
        example("nope", 1, 0)
    with pytest.raises(DataError, match=r"chase: hops must be in \[0, 7\], got 8"):
        example("chase", 8, 0)
    with pytest.raises(DataError, match="swaps"):
        example("swaps", 0, 0)


def test_tokenizer_is_one_token_per_byte_with_fixed_ids_and_round_trips(tmp_path):
    tok = reasoning_tokenizer()
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (259, 0, 1, 2)
    text = "a=5,b=a?b 0123+9|ab"
    assert tok.encode(text) == [3 + b for b in text.encode()]
    assert tok.decode(tok.encode(text)) == text
    assert tok.token_bytes()[3:].eq(1).all() and tok.token_bytes()[:3].eq(0).all()
    loaded = Tokenizer.load(tok.save(tmp_path / "tok"))
    assert loaded.fingerprint() == tok.fingerprint() and loaded.encode(text) == tok.encode(text)


def test_collate_targets_only_the_answer_and_eos():
    tok = reasoning_tokenizer()
    exs = [Example(ReasoningTask.add, 2, "12+34=", "046"), Example(ReasoningTask.swaps, 1, "a|ab?", "b")]
    x, y = collate(exs, tok, 12)
    assert x.shape == y.shape == (2, 12)
    for row, ex in enumerate(exs):
        n = len(ex.prompt)
        assert tok.decode(x[row, 1 : n + 1].tolist()) == ex.prompt and x[row, 0] == tok.bos_id
        labelled = y[row] != IGNORE_INDEX
        assert labelled.nonzero().flatten().tolist() == list(range(n, n + len(ex.answer) + 1))
        assert tok.decode(y[row][labelled][:-1].tolist()) == ex.answer and y[row][labelled][-1] == tok.eos_id
        assert (x[row, example_length(ex) :] == tok.pad_id).all()
    with pytest.raises(DataError, match="needs 10 positions, more than data.seq_len=9"):
        collate(exs[:1], tok, 9)


def test_loader_is_deterministic_resumable_and_shards_like_one_big_batch():
    tok = reasoning_tokenizer()
    tasks = list(ReasoningTask)
    seq = min_seq_len(tasks, test=False)
    one = ReasoningLoader(tasks, 4, seq, tok, seed=5)
    batches = [next(one) for _ in range(4)]
    again = ReasoningLoader(tasks, 4, seq, tok, seed=5)
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        for a, b in zip(batches, [next(again) for _ in range(4)])
    )
    resumed = ReasoningLoader(tasks, 4, seq, tok, seed=5)
    state = dict(one.state_dict(), batch_index=2)
    resumed.load_state_dict(state)
    assert torch.equal(next(resumed)[0], batches[2][0])
    # two ranks together yield the batches one rank yields, rank r taking every other global batch
    ranks = [ReasoningLoader(tasks, 4, seq, tok, rank=r, world_size=2, seed=5) for r in range(2)]
    assert torch.equal(next(ranks[0])[0], batches[0][0]) and torch.equal(next(ranks[1])[0], batches[1][0])
    assert torch.equal(next(ranks[0])[0], batches[2][0])
    with pytest.raises(DataError, match="seed was 5 when saved, now 6"):
        ReasoningLoader(tasks, 4, seq, tok, seed=6).load_state_dict(state)


def test_loader_mixes_tasks_and_training_difficulties_and_never_yields_a_test_problem():
    tok = reasoning_tokenizer()
    loader = ReasoningLoader(["add", "swaps"], 64, 40, tok, seed=0)
    small = {(ReasoningTask.add, 1), (ReasoningTask.swaps, 1)}  # under 10x the test set: not held out
    held = {e.prompt for e in held_out_problems(["add", "swaps"]) if (e.task, e.difficulty) not in small}
    seen = set()
    for _ in range(20):
        x, y = next(loader)
        for row in range(x.shape[0]):
            prompt = tok.decode(x[row][: (y[row] != IGNORE_INDEX).nonzero()[0, 0] + 1].tolist()[1:])
            task = ReasoningTask.add if "+" in prompt else ReasoningTask.swaps
            seen.add((task, SOLVERS[task](prompt)[1]))
            assert prompt not in held
    want = {(t, d) for t in (ReasoningTask.add, ReasoningTask.swaps) for d in TASKS[t].train_difficulties}
    assert seen == want


def test_loader_checks_seq_len_against_the_longest_training_problem():
    with pytest.raises(DataError, match="data.seq_len=20 is too short .* chase: they need 43"):
        ReasoningLoader(["chase"], 2, 20, reasoning_tokenizer())


def test_sample_problems_are_held_out_at_the_hardest_trained_difficulty():
    probs = sample_problems(["chase", "swaps"])
    assert [(p.task, p.difficulty) for p in probs] == [("chase", 3), ("swaps", 6)]
    assert probs[0] in held_out_problems(["chase"])


def test_run_config_takes_tasks_as_typed_values_and_rejects_bad_combinations(tmp_path):
    cfg = load_run_config("tiny", ["--data.tasks", "[chase,add]"])
    assert cfg.data.tasks == [ReasoningTask.chase, ReasoningTask.add]
    (tmp_path / "run.yaml").write_text(cfg.to_yaml())
    assert load_run_config(str(tmp_path / "run.yaml")).data.tasks == cfg.data.tasks
    base = RunConfig(train=TrainArgs(max_steps=1))
    with pytest.raises(ConfigError, match="data.tasks names a task twice"):
        base.replace({"data.tasks": ["add", "add"]})
    with pytest.raises(ConfigError, match="data.tasks must name at least one task"):
        base.replace({"data.tasks": []})
    with pytest.raises(ConfigError, match="data.shard_dir must be null"):
        base.replace({"data.tasks": ["add"], "data.shard_dir": "s", "data.tokenizer_dir": "t"})
    with pytest.raises(ConfigError, match="data.tasks"):
        base.replace({"data.tasks": ["parity"]})
