"""What a location string is: a URI (``s3://bucket/x``, ``file:///tmp/x``, ``http://host:8265``) or a
local path. The one test for it; everything that tells the two apart imports :func:`is_uri`."""

from __future__ import annotations

import os
from pathlib import Path

SCHEME_SEPARATOR = "://"


def is_uri(location: str | os.PathLike) -> bool:
    """Whether ``location`` names a scheme (``s3://``, ``gs://``, ``file://``, ``http://``, ...)
    rather than a local path; ``~``, relative and absolute paths are local."""
    return SCHEME_SEPARATOR in os.fspath(location)


def is_shared_uri(location: str) -> bool:
    """A URI every node of a cluster reaches (s3://, gs://, hdfs://, ...): any but ``file://``."""
    return is_uri(location) and not location.startswith("file://")


def resolve_storage(value: str) -> str:
    """A URI as given (without a trailing ``/``); a path made absolute here (``~`` expanded), so it
    means the same from a job's or a worker's working directory."""
    if is_uri(value):
        return value.rstrip("/")
    return str(Path(value).expanduser().resolve())
