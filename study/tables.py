"""Atomic Parquet writes: a table is written to a temporary name beside it and renamed into place,
so a crash or a full disk never leaves half a table where a reader expects a whole one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from study.storage import replacing

METADATA_KEY = b"study.report.provenance"
# The report's files in an experiment folder (study.report).
TRIALS, EPOCHS, COMPARISON, SUMMARY = "trials.parquet", "epochs.parquet", "comparison.parquet", "summary.md"
STUDY_FILE = "study.json"  # written by study.sweep beside Ray's state: the study as planned, read by the report


def write_table(frame: pd.DataFrame, path: str | Path, provenance: dict[str, Any] | None = None) -> Path:
    """Write `frame` to `path` atomically, with `provenance` as JSON in the schema metadata."""
    path = Path(path)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if provenance is not None:
        metadata = {**(table.schema.metadata or {}), METADATA_KEY: json.dumps(provenance, default=str).encode()}
        table = table.replace_schema_metadata(metadata)
    with replacing(path) as temporary:
        pq.write_table(table, temporary)
    return path


def read_provenance(path: str | Path, filesystem: pafs.FileSystem | None = None) -> dict[str, Any]:
    """The provenance a table was written with ({} when it has none). `filesystem`: where `path`
    is, for a table in remote storage (a URI as `path` also works)."""
    metadata = pq.read_schema(path, filesystem=filesystem).metadata or {}
    return json.loads(metadata[METADATA_KEY]) if METADATA_KEY in metadata else {}
