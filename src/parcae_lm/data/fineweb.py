"""FineWeb-Edu sample parquet files from the Hugging Face hub (the reference's pretraining data).

The files keep the repo's layout under `out_dir` (`sample/10BT/000_00000.parquet`, ...); each is checked to
be a parquet file with a string `text` column, so `parcae data prepare --input OUT_DIR` can read them
directly. The download itself is `parcae_lm.download.hub_snapshot`.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from parcae_lm.download import hub_list_files, hub_snapshot
from parcae_lm.errors import DataError

FINEWEB_EDU_REPO = "HuggingFaceFW/fineweb-edu"


class FineWebSample(Enum):
    """The fixed-size random samples FineWeb-Edu publishes (folder `sample/<value>/`)."""

    BT10 = "10BT"
    BT100 = "100BT"
    BT350 = "350BT"


def fineweb_files(
    sample: FineWebSample, max_files: int | None, repo_id: str = FINEWEB_EDU_REPO, revision: str | None = None
) -> list[str]:
    """The repo paths of the first `max_files` parquet files of `sample` (all of them if None), sorted."""
    prefix = f"sample/{sample.value}/"
    listing = hub_list_files(repo_id, repo_type="dataset", revision=revision)
    files = sorted(f for f in listing if f.startswith(prefix) and f.endswith(".parquet"))
    if not files:
        raise DataError(f"dataset {repo_id} has no parquet files under {prefix}")
    return files if max_files is None else files[:max_files]


def fetch_fineweb_edu(
    out_dir: str | Path,
    sample: FineWebSample = FineWebSample.BT10,
    max_files: int | None = 1,
    repo_id: str = FINEWEB_EDU_REPO,
    revision: str | None = None,
) -> list[Path]:
    """Download FineWeb-Edu sample shards (each about 2 GB) into `out_dir`; returns their local paths.

    Already-downloaded files are not fetched again.
    """
    # (lazily: the CLI imports this module to build its argument parser, and pyarrow takes ~0.4 s to load)

    if max_files is not None and max_files < 1:
        raise DataError(f"max_files must be positive or None, got {max_files}")
    files = fineweb_files(sample, max_files, repo_id, revision)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    root = hub_snapshot(
        repo_id, repo_type="dataset", revision=revision, allow_patterns=files, local_dir=out_dir
    )
    paths = []
    for f in files:
        path = root / f
        if not path.is_file():
            raise DataError(f"{f} was not downloaded to {path}")
        try:
            schema = pq.read_schema(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"downloaded {path} is not a readable parquet file: {e}") from e
        text_type = schema.field("text").type if "text" in schema.names else None
        if text_type is None or not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
            raise DataError(f"downloaded {path} has no string 'text' column (columns: {schema.names})")
        paths.append(path)
    return paths
