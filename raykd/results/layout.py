"""The layout of a search folder, named once, and finding the tables from any folder a user gives.

One search writes ``STORAGE/NAME/`` (a local folder or a pyarrow URI)::

    tables/trials/ tables/epochs/ tables/runs/   the Parquet tables (part files, raykd.results)
    teacher.json                                 the teacher's checkpoint and metrics (local storage)
    optuna.journal                               the Optuna study (local storage)
    confirm/                                     Tune's state of the confirmation phase
    ray_train/                                   Ray Train's folders of TorchTrainer trials
    trial_<id>/                                  Tune's trial folders (checkpoints)

The search writes it (:class:`SearchFolder`), the analysis, the visualiser and
:func:`raykd.results.load` read it; :func:`find_tables` is how every reader turns a folder
it is given into the tables folder.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.fs as pafs

from raykd.errors import UserError
from raykd.results.store import join
from raykd.uri import is_uri

TABLES_DIR = "tables"
TEACHER_FILE = "teacher.json"
JOURNAL_FILE = "optuna.journal"
CONFIRM_DIR = "confirm"
RAY_TRAIN_DIR = "ray_train"
TRIAL_PREFIX = "trial_"
KEY_TABLE = "trials"
"""The table every search has: a folder holding ``trials/`` is a tables folder."""


@dataclass(frozen=True)
class SearchFolder:
    """The paths inside one search folder ``root`` (a local path or a URI): the search ``name``
    under ``storage`` (the folder or URI holding every search), ``STORAGE/NAME``."""

    root: str

    @classmethod
    def of(cls, storage: str, name: str) -> SearchFolder:
        """The folder of search ``name`` under ``storage``."""
        return cls(f"{storage.rstrip('/')}/{name}")

    @property
    def storage(self) -> str:
        return self.root.rsplit("/", 1)[0] or "/"

    @property
    def name(self) -> str:
        return self.root.rsplit("/", 1)[1]

    @property
    def tables(self) -> str:
        return join(self.root, TABLES_DIR)

    @property
    def teacher(self) -> str:
        return join(self.root, TEACHER_FILE)

    @property
    def journal(self) -> str | None:
        """The Optuna journal; None on URI storage (Optuna's journal needs a local file)."""
        return None if is_uri(self.root) else join(self.root, JOURNAL_FILE)

    @property
    def confirm(self) -> str:
        return join(self.root, CONFIRM_DIR)

    @property
    def ray_train(self) -> str:
        return join(self.root, RAY_TRAIN_DIR)

    def trial(self, trial_id: str) -> str:
        """Tune's folder of trial ``trial_id``."""
        return join(self.root, f"{TRIAL_PREFIX}{trial_id}")


@dataclass(frozen=True)
class FoundTables:
    """Where :func:`find_tables` found the tables: the tables folder and, when known, its search folder."""

    tables: str
    search: str | None


def _is_dir(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type == pafs.FileType.Directory


def find_tables(fs: pafs.FileSystem, base: str, origin: str | None = None) -> FoundTables | None:
    """The tables folder that the folder ``base`` means.

    ``base`` is a search folder (``base/tables/trials``), a tables folder (``base/trials``) or a
    storage root holding exactly one search (``base/NAME/tables/trials``). None when it is none
    of these (e.g. one table's folder of part files). Raises :class:`UserError` (naming
    ``origin``) for a storage root holding several searches.
    """
    base = base.rstrip("/") or "/"
    if _is_dir(fs, join(join(base, TABLES_DIR), KEY_TABLE)):
        return FoundTables(join(base, TABLES_DIR), base)
    if _is_dir(fs, join(base, KEY_TABLE)):
        parent = base.rsplit("/", 1)[0] if "/" in base.strip("/") else None
        return FoundTables(base, parent)
    try:
        children = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    except OSError:
        return None
    searches = sorted(info.path.rstrip("/") for info in children
                      if info.type == pafs.FileType.Directory and not info.base_name.startswith(".")
                      and _is_dir(fs, join(join(info.path, TABLES_DIR), KEY_TABLE)))
    if len(searches) > 1:
        names = ", ".join(path.rsplit("/", 1)[-1] for path in searches)
        raise UserError(f"this folder holds {len(searches)} searches ({names}): name one of them, "
                        f"e.g. {origin or base}/{searches[0].rsplit('/', 1)[-1]}", file=origin or base)
    if searches:
        return FoundTables(join(searches[0], TABLES_DIR), searches[0])
    return None
