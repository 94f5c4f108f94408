"""Download FineWeb-Edu sample parquet files from the Hugging Face hub (the reference's pretraining data).

`huggingface_hub` is optional: it is imported only here, when a download is asked for. The files keep the
repo's layout under `out_dir` (`sample/10BT/000_00000.parquet`, ...); each is checked to be a parquet file
with a string `text` column, so `parcae data prepare --input OUT_DIR` can read them directly.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from types import ModuleType

from parcae_lm.errors import DataError

FINEWEB_EDU_REPO = "HuggingFaceFW/fineweb-edu"


class FineWebSample(Enum):
    """The fixed-size random samples FineWeb-Edu publishes (folder `sample/<value>/`)."""

    BT10 = "10BT"
    BT100 = "100BT"
    BT350 = "350BT"


def _hub() -> ModuleType:
    try:
        import huggingface_hub
    except ImportError as e:
        raise DataError(
            "downloading from the Hugging Face hub needs the huggingface_hub package: pip install huggingface_hub"
        ) from e
    return huggingface_hub


def fineweb_files(
    sample: FineWebSample, max_files: int | None, repo_id: str = FINEWEB_EDU_REPO, revision: str | None = None
) -> list[str]:
    """The repo paths of the first `max_files` parquet files of `sample` (all of them if None), sorted."""
    hub = _hub()
    prefix = f"sample/{sample.value}/"
    try:
        listing = hub.list_repo_files(repo_id, repo_type="dataset", revision=revision)
    except Exception as e:  # network and hub errors come in many types; all mean "could not list"
        raise DataError(f"cannot list files of dataset {repo_id} on the hub: {e}") from e
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

    Already-downloaded files are not fetched again (snapshot_download skips them).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if max_files is not None and max_files < 1:
        raise DataError(f"max_files must be positive or None, got {max_files}")
    hub = _hub()
    files = fineweb_files(sample, max_files, repo_id, revision)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        root = hub.snapshot_download(
            repo_id, repo_type="dataset", revision=revision, allow_patterns=files, local_dir=str(out_dir)
        )
    except Exception as e:
        raise DataError(f"download of {len(files)} file(s) from {repo_id} failed: {e}") from e
    paths = []
    for f in files:
        path = Path(root) / f
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
