"""Sweep points as cluster jobs: each point's resolved run config written to a YAML file, and one
`parcae train --config <file>` command per unfinished point (under torchrun, or submitted with sbatch).

The file holds the point's whole run config (explicit train.max_steps, run_name, out_dir, resume: true),
so a resubmitted job continues from its last checkpoint and trains exactly what `parcae sweep` would.
"""

from __future__ import annotations

import enum
import shlex

from parcae_lm.files import atomic_write_text
from parcae_lm.scaling.sweep import SweepPoint


class Emit(enum.StrEnum):
    TORCHRUN = "torchrun"
    SLURM = "slurm"


def emit_commands(
    points: list[SweepPoint], kind: Emit, *, nproc_per_node: int = 1, slurm_args: str = ""
) -> list[str]:
    """Write every unfinished point's run config to `point.config_file` and return one shell command
    per such point (torchrun, or an sbatch submission wrapping it)."""
    lines = []
    for p in points:
        p.check_run_dir()
        if p.finished():
            continue
        atomic_write_text(p.config_file, p.config.to_yaml())
        train = ["torchrun", "--standalone", f"--nproc_per_node={nproc_per_node}", "--no-python", "parcae"]
        cmd = shlex.join([*train, "train", "--config", str(p.config_file)])
        if kind is Emit.SLURM:
            head = ["sbatch", f"--job-name={p.name}", "--nodes=1", "--ntasks-per-node=1"]
            head += [f"--gpus-per-node={nproc_per_node}", f"--output={p.run_dir}/slurm-%j.log"]
            head += shlex.split(slurm_args)
            # Slurm does not create the --output directory: make it before submitting.
            mkdir = shlex.join(["mkdir", "-p", str(p.run_dir)])
            cmd = f"{mkdir} && {shlex.join(head)} --wrap {shlex.quote(cmd)}"
        lines.append(cmd)
    return lines
