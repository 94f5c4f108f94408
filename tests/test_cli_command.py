"""The `parcae` command line: every command documents every option, and errors are one line with the
right exit code (2 usage, 1 failure, 130 interrupted), with a traceback only under --debug."""

from __future__ import annotations

import enum
import inspect
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from docstring_parser import parse as parse_docstring
from jsonargparse import ArgumentError

from parcae_lm.cli import COMMANDS, main
from parcae_lm.cli.command import Group, UsageError, options_of, run
from parcae_lm.config.train import run_parser
from parcae_lm.errors import ConfigError


def leaves(commands=COMMANDS, path=()):
    for name, entry in commands.items():
        if isinstance(entry, Group):
            yield from leaves(entry.commands, (*path, name))
        else:
            yield (*path, name), entry


LEAVES = list(leaves())


def test_the_table_has_every_command():
    names = {" ".join(path) for path, _ in LEAVES}
    assert names == {
        "train",
        "generate",
        "serve",
        "info",
        "sweep",
        *(
            f"eval {c}"
            for c in ["bpb", "core", "core-extended", "lambada", "reasoning", "fetch", "parity", "anchor"]
        ),
        *(f"data {c}" for c in ["prepare", "default", "fetch-fineweb", "info"]),
        "tokenizer train",
        "bench train",
        "bench generate",
        *(f"infer {c}" for c in ["adaptive-eval", "cache-eval", "quantize", "export", "export-hf"]),
        *(f"fit {c}" for c in ["isoflop", "parametric", "testtime", "unified"]),
    }


@pytest.mark.parametrize("path,fn", LEAVES, ids=[" ".join(p) for p, _ in LEAVES])
def test_every_command_follows_the_convention_and_its_help_lists_every_option(path, fn, capsys):
    assert main([*path, "--help"]) == 0
    out = capsys.readouterr().out
    doc = parse_docstring(inspect.getdoc(fn))
    assert doc.short_description and doc.short_description in " ".join(out.split())
    if getattr(fn, "options_parser", None) is not None:  # parcae train: the run config's options
        for option in ["--config", "--model_name", "--out_dir", "--train.max_steps", "--data.shard_dir"]:
            assert option in out
        return
    params = inspect.signature(fn).parameters.values()
    documented = {p.arg_name: p.description for p in doc.params}
    assert set(documented) == {p.name for p in params}, "the docstring's Args must document every parameter"
    for p in params:
        assert p.kind in (p.POSITIONAL_ONLY, p.KEYWORD_ONLY) and p.annotation is not p.empty, p.name
        assert documented[p.name], p.name
        shown = p.name if p.kind == p.POSITIONAL_ONLY else f"--{p.name}"
        assert shown in out, f"{' '.join(path)} --help does not mention {shown}"
    # the same name for the same thing across commands: --shard_dir, --recurrence, --model.<field>
    assert not {p.name for p in params} & {"shards", "num_steps", "set"}


# ---------------------------------------------------------------------------------------------- machinery


class Color(enum.Enum):
    RED = "red"
    DARK_BLUE = "dark-blue"


def test_signatures_become_options(capsys):
    calls = []

    def paint(
        wall: Path,
        note: str = "",
        /,
        *,
        color: Color = Color.RED,
        shade: Color | None = None,
        coats: int = 2,
        sizes: tuple[int, ...] = (1,),
        dry: bool = False,
    ) -> None:
        """Paint a wall.

        Args:
            wall: The wall.
            note: A note.
            color: The colour.
            shade: A second colour.
            coats: Coats of paint.
            sizes: Brush sizes.
            dry: Only pretend.
        """
        calls.append((wall, note, color, shade, coats, sizes, dry))

    table = {"paint": paint}
    assert run(table, ["paint", "w"]) == 0  # only what is given reaches the function: its own defaults
    assert calls.pop() == (Path("w"), "", Color.RED, None, 2, (1,), False)
    argv = ["paint", "w", "hi", "--color", "dark-blue", "--shade", "red", "--coats", "3", "--sizes", "[4,5]"]
    assert run(table, [*argv, "--dry"]) == 0  # enums by value, a bare bool means true
    assert calls.pop() == (Path("w"), "hi", Color.DARK_BLUE, Color.RED, 3, (4, 5), True)
    assert run(table, ["paint", "w", "--dry", "false"]) == 0
    assert calls.pop()[-1] is False
    assert run(table, ["paint", "w", "--color", "DARK_BLUE"]) == 2
    assert "--color: expected one of red, dark-blue, got 'DARK_BLUE'" in capsys.readouterr().err
    assert run(table, ["paint", "--help"]) == 0
    out = capsys.readouterr().out
    assert "{red,dark-blue}" in out and "default: red" in out and "wall" in out and "[note]" in out

    def loose(x: int) -> None:
        """Not positional-only nor keyword-only."""

    with pytest.raises(TypeError, match="must come before '/' or after '\\*'"):
        run({"loose": loose}, ["loose", "1"])


def test_a_command_can_take_the_options_of_a_library_parser():
    got = []

    @options_of(run_parser)
    def fake_train(settings: dict) -> None:
        """Train."""
        got.append(settings)

    assert (
        run({"t": fake_train}, ["t", "--config", "tiny", "--train.max_steps", "5", "--eval.depths", "[1,2]"])
        == 0
    )
    assert got.pop() == {"config": "tiny", "train": {"max_steps": 5}, "eval": {"depths": [1, 2]}}
    assert run({"t": fake_train}, ["t"]) == 0
    assert got.pop() == {}  # nothing given: the run config file decides everything
    assert run_parser().description is None  # the library's parser was copied, not changed


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["generate"], "missing MODEL"),
        (["generate", "m", "--max_new_tokens", "x"], "--max_new_tokens: expected int, got 'x'"),
        (["generate", "m", "--max-new-tokens", "5"], "unrecognized arguments: --max-new-tokens"),
        (["generate", "m", "--temperature", "nan"], "--temperature: expected float, got 'nan'"),
        (["eval", "core", "m", "--recurrence", "1,2"], "--recurrence: expected list[int] or null, got '1,2'"),
        (["eval", "fetch", "--suite", "all"], "--suite: expected one of core, core-extended, got 'all'"),
        (["eval"], "give a command: bpb, core, core-extended, lambada, reasoning,"),
        (["eval", "nope"], "invalid choice: 'nope'"),
        (["fit", "isoflop", "r.csv"], "missing --out"),
        (["train", "--train.max_steps", "many"], "--train.max_steps: expected int or null, got 'many'"),
        (["train", "--max_steps", "5"], "unrecognized arguments: --max_steps"),
        (["data", "prepare", "--tokenizer", "t", "--out", "o"], "give exactly one of --input and --corpus"),
    ],
)
def test_usage_errors_exit_2_with_one_line(argv, expected, capsys):
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert expected in line
    if not line.startswith("error: give exactly"):  # a parser error says where the options are listed
        assert "--help` lists the options" in line


def test_failures_exit_1_with_one_line(tmp_path, capsys):
    assert main(["info", "no-such-config"]) == 1
    assert "unknown config 'no-such-config'" in _one_error_line(capsys.readouterr().err)
    assert main(["generate", str(tmp_path / "missing")]) == 1
    assert "does not exist" in _one_error_line(capsys.readouterr().err)
    assert main(["info", "parcae-micro", "--model.mean_recurrence", "-1"]) == 1
    assert "mean_recurrence" in _one_error_line(capsys.readouterr().err)
    assert main(["bench", "train", "--device", "tpu"]) == 1
    assert "unknown device 'tpu'" in _one_error_line(capsys.readouterr().err)


def test_value_errors_from_the_library_are_one_line_too(capsys):
    def sample(*, temperature: float = 1.0) -> None:
        """Sample.

        Args:
            temperature: Temperature.
        """
        raise ValueError(f"temperature must be ≥ 0,\n got {temperature}")

    assert run({"s": sample}, ["s", "--temperature", "-1"]) == 1
    assert _one_error_line(capsys.readouterr().err) == "error: temperature must be ≥ 0, got -1.0"


def test_debug_shows_the_traceback(capsys):
    with pytest.raises(ConfigError, match="no-such-config"):
        main(["--debug", "info", "no-such-config"])
    with pytest.raises(ConfigError):
        main(["info", "no-such-config", "--debug"])  # after the command too
    with pytest.raises(ArgumentError):
        main(["--debug", "generate", "m", "--max_new_tokens", "x"])
    with pytest.raises(UsageError):
        main(["data", "prepare", "--tokenizer", "t", "--out", "o", "--debug"])


def test_interrupts_broken_pipes_and_no_command(capsys, monkeypatch):
    def wait() -> None:
        """Wait."""
        raise KeyboardInterrupt

    def write() -> None:
        """Write."""
        raise BrokenPipeError

    assert run({"wait": wait}, ["wait"]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert run({"write": write}, ["write"]) == 0  # `parcae ... | head`: quiet
    assert sys.stderr.closed
    monkeypatch.undo()
    assert main([]) == 2
    assert "generate" in capsys.readouterr().out  # no command: the list of commands


def test_python_m_parcae_lm_runs_the_cli():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ok = subprocess.run(
        [sys.executable, "-m", "parcae_lm", "info", "parcae-micro"], capture_output=True, text=True, env=env
    )
    assert ok.returncode == 0 and "parameters (total, unique)" in ok.stdout, ok.stderr[-2000:]
    bad = subprocess.run(
        [sys.executable, "-m", "parcae_lm", "info", "parcae-micro", "--seq_len", "long"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "error: --seq_len: expected int or null, got 'long'" in bad.stderr
