"""Where the part files live: resolving a results root and publishing parts atomically."""

from __future__ import annotations

import errno
import itertools
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raykd.uri import is_uri

TMP_PREFIX = ".tmp-"
# Storage errors no retry fixes: full, over quota, read-only.
STORAGE_GONE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
_counter = itertools.count()


def resolve(root: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """Filesystem and path of ``root``: a URI (``s3://...``, ``file:///...``) or a local path."""
    text = os.fspath(root)
    if is_uri(text):
        return pafs.FileSystem.from_uri(text)
    return pafs.LocalFileSystem(), Path(text).expanduser().resolve().as_posix()


def location(origin: str, path: str) -> str:
    """``path`` (as :func:`resolve` returns it for ``origin``) in the form readers take: with the
    scheme of ``origin`` kept for remote filesystems."""
    return f"{origin.split('://', 1)[0]}://{path.lstrip('/')}" if is_uri(origin) else path


def join(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}"


def part_name() -> str:
    """A unique part name: ``part-<unix_ns>-<pid>-<counter>.parquet``."""
    return f"part-{time.time_ns()}-{os.getpid()}-{next(_counter)}.parquet"


def _write_parquet(table: pa.Table, sink) -> None:
    pq.write_table(table, sink)


def publish(fs: pafs.FileSystem, folder: str, table: pa.Table) -> str:
    """Write ``table`` as a new part file in ``folder``; returns its path.

    The file is written under a ``.tmp-`` name in the same folder, then moved to its final
    name (a rename on local disks), so readers never see a partial part. On failure the
    temporary file is removed and the error re-raised; existing parts are untouched.
    """
    fs.create_dir(folder, recursive=True)
    name = part_name()
    tmp, final = join(folder, TMP_PREFIX + name), join(folder, name)
    try:
        with fs.open_output_stream(tmp) as sink:
            _write_parquet(table, sink)
        fs.move(tmp, final)
    except BaseException:
        try:
            fs.delete_file(tmp)
        except OSError:
            pass
        raise
    return final


def list_parts(fs: pafs.FileSystem, folder: str) -> list[str]:
    """Paths of the published part files in ``folder`` (``.tmp-*`` and hidden files skipped)."""
    infos = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    return sorted(
        info.path
        for info in infos
        if info.type == pafs.FileType.File
        and info.base_name.endswith(".parquet")
        and not info.base_name.startswith((".", "_"))
    )


_REFUSED = ("ACCESS_DENIED", "AccessDenied", "InvalidAccessKeyId", "INVALID_ACCESS_KEY_ID", "SignatureDoesNotMatch",
            "SIGNATURE_DOES_NOT_MATCH", "InvalidToken", "ExpiredToken")


def uri_problem(err: OSError, uri: str) -> str:
    """One line on why a URI storage failed: its bucket missing, the credentials refused, the
    endpoint unreachable, or the storage's own message (which never holds the credentials)."""
    text = str(err)
    if "NO_SUCH_BUCKET" in text or "NoSuchBucket" in text:
        return f"the bucket {uri.split('://', 1)[1].split('/', 1)[0]!r} does not exist"
    if any(code in text for code in _REFUSED):
        return ("the storage refused the credentials (the standard AWS variables AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY / AWS_PROFILE, or the node's instance role)")
    if "NETWORK_CONNECTION" in text or "Couldn't connect" in text or "curlCode" in text:
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return f"cannot reach the endpoint {endpoint or 'of the storage'}"
    return text.splitlines()[0] if text else type(err).__name__


def check_uri_writable(uri: str) -> None:
    """Fail in one line, before any work, when a URI storage cannot take an object: a small
    probe written and deleted under ``uri``. The endpoint and credentials are the filesystem's
    (``AWS_ENDPOINT_URL``, the standard AWS variables)."""
    from raykd.errors import UserError

    try:
        fs, path = resolve(uri)
        if isinstance(fs, pafs.LocalFileSystem):  # file://: the folder, as for a plain path
            fs.create_dir(path, recursive=True)
        probe = join(path, f".raykd-write-test-{os.getpid()}")
        with fs.open_output_stream(probe) as out:
            out.write(b"\0")
        fs.delete_file(probe)
    except OSError as err:
        raise UserError(f"cannot write there: {uri_problem(err, uri)}", file=uri, key="--storage") from None


def storage_failure(err: BaseException) -> OSError | None:
    """The full / over-quota / read-only storage error behind ``err`` (its chain of causes),
    or None."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in STORAGE_GONE:
            return err
        err = err.__cause__ or err.__context__
    return None
