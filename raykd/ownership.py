"""One live process per folder: a search folder, a training ``output_dir``.

The owner of a folder is named by ``FOLDER/.owner.json``: the random owner id, host name,
the kernel's boot id, the pid namespace, the pid and the process's start time in clock ticks
after boot (``/proc/PID/stat`` field 22, so a reused pid is not taken for the owner), and the
command. On a local disk it is written complete under a temporary name, then hard-linked to
its final name: ``link`` fails when the name exists, exactly like ``open(O_CREAT | O_EXCL)``,
and nobody ever reads a half-written owner file. Checks and take-overs run under ``flock`` of
the folder itself, so two processes never both replace one dead owner.

When is an owner gone (its folder taken over without asking)?

* Same machine (same host name, boot id and pid namespace): its pid is not running, or runs
  a process with another start time. Exact.
* Same host name, another boot id (the machine restarted, or another machine of that name):
  its heartbeat is older than ``2 * HEARTBEAT_S``.
* Another host or pid namespace: nothing about its process can be seen from here. A live
  owner touches its file every ``HEARTBEAT_S`` seconds; it is gone once that heartbeat is
  older than ``STALE_AFTER_S`` (clocks of the hosts and the file server must agree within
  about a minute). A frozen owner (suspended, partitioned) can be taken over that way: it
  then finds a foreign id in the file at its next table publish (:func:`check_held`) and stops.

On URI storage (``s3://``, ``gs://``) there is no atomic create-if-absent: a driver writes its
owner object, waits ``SETTLE_S`` and reads it back; the one whose id is there runs, the other
refuses. Two drivers starting within milliseconds of each other, with one stalling for seconds
between its check and its write, could both pass; the publish check then stops the one whose
id was overwritten before it adds rows to the tables.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.fs as pafs

from raykd.errors import UserError
from raykd.uri import is_uri

OWNER_FILE = ".owner.json"
HEARTBEAT_S = 15.0
STALE_AFTER_S = 120.0
SETTLE_S = 2.0


@dataclass(frozen=True)
class Owner:
    """The process holding a folder (see the module docstring for each field's use)."""

    id: str
    host: str
    pid: int
    start_ticks: int | None  # clock ticks after boot; None where /proc is missing
    boot_id: str | None
    pid_ns: str | None
    started_at: str  # the process's start, UTC, for people
    command: str
    job_id: str | None = None  # the Ray job running it, if any

    def describe(self) -> str:
        job = f", Ray job {self.job_id}" if self.job_id else ""
        return f"{self.command} on host {self.host}, pid {self.pid}, started {self.started_at}{job}"


class FolderOwned(UserError):
    """The folder is held by another live process."""

    def __init__(self, folder: str, owner: Owner, key: str, todo: str):
        self.owner = owner
        super().__init__(f"in use by {owner.describe()}; {todo}", file=folder, key=key)


class OwnershipLost(UserError):
    """This process's owner file was replaced: another process took the folder over."""


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError:
        return None


def _stat_fields(pid: int) -> list[str] | None:
    text = _read(f"/proc/{pid}/stat")
    return text.rsplit(")", 1)[1].split() if text else None  # the name in (...) may hold spaces


def _start_ticks(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None  # field 22 of stat(5)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed but not yet reaped by its parent, does not)."""
    fields = _stat_fields(pid)
    if fields is not None:
        return fields[0] != "Z"
    try:
        os.kill(pid, 0)  # no /proc (macOS), or no such pid
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pid_ns() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _started_at(ticks: int | None) -> str:
    boot = next((int(line.split()[1]) for line in (_read("/proc/stat") or "").splitlines()
                 if line.startswith("btime ")), None)
    when = boot + ticks / os.sysconf("SC_CLK_TCK") if ticks is not None and boot else time.time()
    return datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def this_process(command: str) -> Owner:
    ticks = _start_ticks(os.getpid())
    return Owner(id=uuid.uuid4().hex, host=socket.gethostname(), pid=os.getpid(), start_ticks=ticks,
                 boot_id=_read("/proc/sys/kernel/random/boot_id"), pid_ns=_pid_ns(), started_at=_started_at(ticks),
                 command=command, job_id=os.environ.get("RAYKD_JOB_ID") or None)


def _parse(text: str | bytes | None) -> Owner | None:
    try:
        return Owner(**json.loads(text)) if text else None
    except (ValueError, TypeError):
        return None


def gone_reason(owner: Owner, heartbeat_age_s: float) -> str | None:
    """Why ``owner`` no longer holds its folder, or None while it may be alive."""
    me = this_process(owner.command)
    if owner.host == me.host and owner.boot_id == me.boot_id and owner.pid_ns == me.pid_ns:
        if owner.pid == me.pid and owner.start_ticks == me.start_ticks:
            return None  # this very process: a folder claimed twice is a bug, not a dead owner
        if not _alive(owner.pid):
            return "its process has ended"
        ticks = _start_ticks(owner.pid)
        if ticks is not None and owner.start_ticks is not None and ticks != owner.start_ticks:
            return "its process has ended (the pid now belongs to another process)"
        return None
    if owner.host == me.host and owner.boot_id != me.boot_id and heartbeat_age_s > 2 * HEARTBEAT_S:
        return f"the machine restarted since (no heartbeat for {heartbeat_age_s:.0f} s)"
    if heartbeat_age_s > STALE_AFTER_S:
        return f"no heartbeat from host {owner.host} for {heartbeat_age_s:.0f} s"
    return None


def _uri(folder: str) -> bool:
    return is_uri(folder)


def _file(folder: str) -> str:
    return f"{folder.rstrip('/')}/{OWNER_FILE}"


def current_owner(folder: str) -> tuple[Owner | None, float]:
    """The owner recorded for ``folder`` (None: none or unreadable) and its heartbeat age in s."""
    if _uri(folder):
        fs, path = pafs.FileSystem.from_uri(_file(folder))
        info = fs.get_file_info(path)
        if info.type != pafs.FileType.File:
            return None, 0.0
        with fs.open_input_stream(path) as stream:
            owner = _parse(stream.read())
        mtime = info.mtime.timestamp() if info.mtime is not None else time.time()
        return owner, time.time() - mtime
    try:
        with open(_file(folder), "rb") as fh:
            return _parse(fh.read()), time.time() - os.fstat(fh.fileno()).st_mtime
    except FileNotFoundError:
        return None, 0.0


def live_owner(folder: str) -> Owner | None:
    """The live owner of ``folder``, or None when it is free or its owner is gone."""
    owner, age = current_owner(folder)
    return owner if owner is not None and gone_reason(owner, age) is None else None


def has_content(folder: str | Path) -> bool:
    """Whether a local folder holds anything besides an owner file (a driver that died while
    holding it but before writing anything leaves only that)."""
    try:
        return any(not p.name.startswith(OWNER_FILE) for p in Path(folder).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True  # there, unreadable: not a folder to start a new search in


@contextlib.contextmanager
def _guard(folder: Path):
    """``flock`` of the folder itself; yields False when the folder was removed meanwhile.
    Where ``flock`` is not supported (some network file systems) the owner file's exclusive
    creation still holds, only two simultaneous take-overs of one dead owner are not ordered."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EBADF, errno.EINVAL):
                raise
        try:
            present = os.fstat(fd).st_ino == os.stat(folder).st_ino
        except FileNotFoundError:
            present = False
        yield present
    finally:
        os.close(fd)


class Claim:
    """``folder`` held by this process until :meth:`release`; a daemon thread refreshes its
    heartbeat. ``taken_over``: why the previous owner was judged gone, if there was one."""

    def __init__(self, folder: str, owner: Owner, created: bool, taken_over: str | None):
        self.folder, self.owner, self.created, self.taken_over = folder, owner, created, taken_over
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"owner-heartbeat {folder}", daemon=True)
        self._thread.start()
        _HELD[folder] = self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                if current_owner(self.folder)[0] != self.owner:
                    return  # taken over: the next table publish stops this process
                if _uri(self.folder):
                    _write_uri(self.folder, self.owner)
                else:
                    os.utime(_file(self.folder))
            except OSError:
                pass  # a passing storage error: the next beat retries

    def check(self) -> None:
        """Raise :class:`OwnershipLost` unless the owner file still names this process."""
        try:
            holder = current_owner(self.folder)[0]
        except OSError:
            return  # unreadable storage: the publish that follows reports it
        if holder != self.owner:
            who = f"by {holder.describe()}" if holder else "(its owner file was removed)"
            raise OwnershipLost(f"this folder was taken over {who} while {self.owner.command} ran; stopped "
                                "writing to it", file=self.folder)

    def release(self) -> None:
        """Drop the owner file if it still names this process; a folder this claim created and
        nothing else wrote to is removed with it (a refused or failed start leaves nothing)."""
        self._stop.set()
        _HELD.pop(self.folder, None)
        if _uri(self.folder):
            with contextlib.suppress(OSError):
                if current_owner(self.folder)[0] == self.owner:
                    fs, path = pafs.FileSystem.from_uri(_file(self.folder))
                    fs.delete_file(path)
            return
        folder = Path(self.folder)
        with contextlib.suppress(OSError), _guard(folder):
            if current_owner(self.folder)[0] == self.owner:
                os.unlink(_file(self.folder))
            if self.created and not any(folder.iterdir()):
                folder.rmdir()


_HELD: dict[str, Claim] = {}


def check_held(path: str | os.PathLike) -> None:
    """Before writing under ``path``: raise :class:`OwnershipLost` when this process claimed a
    folder holding ``path`` and another process has taken it over since. No-op otherwise."""
    text = os.fspath(path)
    for folder, claim in list(_HELD.items()):
        if text == folder or text.startswith(folder.rstrip("/") + "/"):
            claim.check()


def ownership_lost(err: BaseException) -> OwnershipLost | None:
    """The :class:`OwnershipLost` behind ``err`` (Tune wraps its callbacks' errors), or None."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OwnershipLost):
            return err
        err = err.__cause__ or err.__context__
    return None


def _write_uri(folder: str, owner: Owner) -> None:
    fs, path = pafs.FileSystem.from_uri(_file(folder))
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)  # a no-op on object stores
    with fs.open_output_stream(path) as out:
        out.write(json.dumps(asdict(owner)).encode())


def _claim_local(folder: Path, me: Owner, key: str, todo: str) -> Claim:
    while True:
        created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{OWNER_FILE}.tmp-{me.id}"
        tmp.write_text(json.dumps(asdict(me)))
        try:
            with _guard(folder) as present:
                if not present:
                    continue  # released and removed by its last owner meanwhile: start again
                reason = None
                try:
                    os.link(tmp, _file(str(folder)))
                except FileExistsError:
                    holder, age = current_owner(str(folder))
                    reason = "its owner file was unreadable" if holder is None else gone_reason(holder, age)
                    if reason is None:
                        raise FolderOwned(str(folder), holder, key, todo) from None
                    os.replace(tmp, _file(str(folder)))  # under the guard: nobody else replaces it
                return Claim(str(folder), me, created, reason)
        finally:
            tmp.unlink(missing_ok=True)


def _claim_uri(folder: str, me: Owner, key: str, todo: str) -> Claim:
    holder, age = current_owner(folder)
    reason = None
    if holder is not None:
        reason = gone_reason(holder, age)
        if reason is None:
            raise FolderOwned(folder, holder, key, todo)
    _write_uri(folder, me)
    time.sleep(SETTLE_S)
    holder = current_owner(folder)[0]
    if holder != me:
        if holder is None:
            raise UserError("the owner object written here vanished; is another process writing this folder?",
                            file=_file(folder), key=key)
        raise FolderOwned(folder, holder, key, todo)
    return Claim(folder, me, False, reason)


def claim(folder: str | os.PathLike, *, command: str, key: str, todo: str) -> Claim:
    """Take ``folder`` (a local path or a URI) for this process, or raise :class:`FolderOwned`
    (a one-line :class:`UserError`: the folder, ``key``, the owner and ``todo``, what to do).

    A dead owner's folder is taken over; ``Claim.taken_over`` says why it was judged dead.
    """
    text = os.fspath(folder)
    me = this_process(command)
    try:
        if _uri(text):
            return _claim_uri(text.rstrip("/"), me, key, todo)
        return _claim_local(Path(text), me, key, todo)
    except OSError as err:
        full = err.errno in (errno.ENOSPC, errno.EDQUOT)
        raise UserError(f"cannot write the owner file there ({err.strerror or err}"
                        f"{'; free some space' if full else ''})", file=text, key=key) from None


def refuse_if_owned(folder: str | os.PathLike, *, key: str, todo: str) -> None:
    """Raise :class:`FolderOwned` when a live process holds ``folder`` (reads only)."""
    text = os.fspath(folder)
    try:
        owner = live_owner(text)
    except OSError:
        return  # unreadable here: claim() reports it
    if owner is not None:
        raise FolderOwned(text, owner, key, todo)

