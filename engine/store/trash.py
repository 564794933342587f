"""The trash: deleting a run (or a recovery record) moves its folder here instead of removing it.

``data_dir()/trash/<entry id>/`` holds ``trash.json`` (where the folder came from, what it is, when it was
trashed) and the folder itself, moved there whole by one ``os.rename`` (atomic on one filesystem: the folder is
either where it was or in the trash, never half-copied). The manifest sits beside the moved folder, never inside
it, so :func:`restore` gives back the very same files, byte for byte. Nothing here deletes data except
:func:`purge`, which the dashboard only calls behind its own confirmation.

Entry ids are ``YYYYmmdd-HHMMSS-<folder name>`` (suffixed ``-1``, ``-2`` … within one second); an id given back by a
page is checked against that shape and must name a folder directly inside the trash, so no id reaches outside it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from engine.errors import LabError
from engine.paths import data_dir
from engine.store.files import read_json, write_json

logger = logging.getLogger(__name__)

TRASH_DIR = "trash"
MANIFEST = "trash.json"
_ID_OK = re.compile(r"^[0-9]{8}-[0-9]{6}-[A-Za-z0-9][A-Za-z0-9._-]{0,160}$")


@dataclass
class TrashEntry:
    """One trashed folder."""

    id: str
    """The entry's folder name under ``data_dir()/trash`` (what :func:`restore` and :func:`purge` take)."""
    path: Path
    """``data_dir()/trash/<id>/``: the manifest and the moved folder."""
    name: str
    """The moved folder's own name (``path / name`` is the folder itself)."""
    original: str
    """Where it came from, relative to ``data_dir()`` (``runs/NAME`` or ``runs/RUN/recoveries/NAME``)."""
    what: str
    """What the folder is, in words (``run``, ``recovery record``)."""
    trashed_at: float

    @property
    def content(self) -> Path:
        return self.path / self.name

    @property
    def original_path(self) -> Path:
        return data_dir() / self.original

    def to_json(self) -> dict:
        return {"name": self.name, "original": self.original, "what": self.what, "trashed_at": self.trashed_at}


def trash_root() -> Path:
    root = data_dir() / TRASH_DIR
    root.mkdir(parents=True, exist_ok=True)
    return root


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _relative_to_data(path: Path) -> str:
    """``path`` relative to ``data_dir()``, refusing the data folder itself, anything outside it and the trash."""
    root = data_dir().resolve()
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise LabError(f"{path} is not a folder that can be moved to the trash")
    parent = path.parent.resolve()  # the folder itself is not resolved: a link is moved as the link
    full = parent / path.name
    if not _inside(parent, root) or full == root:
        raise LabError(f"{path} is not inside the lab's data folder {root}; only runs and records there can be trashed")
    if _inside(full, trash_root().resolve()):
        raise LabError(f"{path} is already in the trash")
    return full.relative_to(root).as_posix()


def move_to_trash(path: Path, what: str) -> TrashEntry:
    """Move the folder ``path`` (under ``data_dir()``) into the trash, as one rename; returns its entry."""
    rel = _relative_to_data(path)
    source = data_dir().resolve() / rel
    if not source.is_dir():
        raise LabError(f"there is no folder {source} to move to the trash")
    name = source.name
    stamp = time.strftime("%Y%m%d-%H%M%S")
    root = trash_root()
    for n in range(1000):
        entry_id = f"{stamp}-{name}" if n == 0 else f"{stamp}-{name}-{n}"
        entry_dir = root / entry_id
        try:
            entry_dir.mkdir(parents=False, exist_ok=False)
            break
        except FileExistsError:
            continue
    else:
        raise LabError("could not make a new trash entry")
    entry = TrashEntry(id=entry_id, path=entry_dir, name=name, original=rel, what=what, trashed_at=time.time())
    try:
        # The manifest first: a crash before the rename leaves an entry without content, which list_trash skips,
        # and the folder still where it was. After the rename, the entry is complete.
        write_json(entry_dir / MANIFEST, entry.to_json())
        os.rename(source, entry.content)
    except OSError as exc:
        shutil.rmtree(entry_dir, ignore_errors=True)
        raise LabError(f"could not move {source} to the trash: {exc.strerror or exc}") from None
    logger.info("moved %s to the trash as %s", source, entry_id)
    return entry


def _entry_dir(entry_id: str) -> Path:
    if not isinstance(entry_id, str) or not _ID_OK.match(entry_id) or ".." in entry_id:
        raise LabError(f"{entry_id!r} is not a trash entry")
    root = trash_root().resolve()
    path = root / entry_id
    if path.resolve().parent != root:
        raise LabError(f"{entry_id!r} is not a trash entry")
    return path


def get_entry(entry_id: str) -> TrashEntry:
    path = _entry_dir(entry_id)
    if not (path / MANIFEST).is_file():
        raise LabError(f"there is no trash entry {entry_id!r} (already restored or purged?)")
    data = read_json(path / MANIFEST)
    name, original = data.get("name"), data.get("original")
    if not isinstance(name, str) or not isinstance(original, str) or Path(original).name != name:
        raise LabError(f"the trash entry {entry_id!r} has a damaged {MANIFEST}")
    return TrashEntry(id=entry_id, path=path, name=name, original=original, what=str(data.get("what", "folder")),
                      trashed_at=float(data.get("trashed_at", path.stat().st_mtime)))


def list_trash() -> list[TrashEntry]:
    """Every complete entry (manifest and folder), newest first."""
    out = []
    for path in trash_root().iterdir():
        if not path.is_dir() or not _ID_OK.match(path.name):
            continue
        try:
            entry = get_entry(path.name)
        except LabError as exc:
            logger.warning("skipping trash entry %s: %s", path.name, exc)
            continue
        if entry.content.exists() or entry.content.is_symlink():
            out.append(entry)
    return sorted(out, key=lambda e: (e.trashed_at, e.id), reverse=True)


def restore(entry_id: str) -> Path:
    """Move a trashed folder back where it came from; returns that path.

    Refused (the entry stays in the trash, untouched) when something now occupies the original path, or when the
    folder it lived in is gone (a record whose run is itself in the trash: restore the run first).
    """
    entry = get_entry(entry_id)
    if not (entry.content.exists() or entry.content.is_symlink()):
        raise LabError(f"the trash entry {entry_id!r} holds no folder")
    root = data_dir().resolve()
    target = root / entry.original
    if not _inside(target.parent.resolve(), root) or target == root:
        raise LabError(f"the trash entry {entry_id!r} points outside the data folder ({entry.original})")
    if target.exists() or target.is_symlink():
        raise LabError(f"cannot restore {entry.what} {entry.name!r}: {target} is taken by another folder now. "
                       f"It stays in the trash; rename or delete the folder there first.")
    if not target.parent.is_dir():
        if not target.parent.parent.is_dir():
            raise LabError(f"cannot restore {entry.what} {entry.name!r}: the folder it lived in ({target.parent.parent}) is "
                           f"gone (is it in the trash too? restore that first). It stays in the trash.")
        target.parent.mkdir(exist_ok=True)
    try:
        os.rename(entry.content, target)
    except OSError as exc:
        raise LabError(f"could not restore {entry.name!r} to {target}: {exc.strerror or exc}; it stays in the trash") from None
    try:
        (entry.path / MANIFEST).unlink()
        entry.path.rmdir()
    except OSError as exc:  # the folder is back; a leftover empty entry is harmless and skipped by list_trash
        logger.warning("could not remove the emptied trash entry %s: %s", entry.path, exc)
    logger.info("restored %s from the trash to %s", entry_id, target)
    return target


def purge(entry_id: str) -> None:
    """Delete a trash entry for good (the only call here that removes data)."""
    path = _entry_dir(entry_id)
    if not path.is_dir():
        raise LabError(f"there is no trash entry {entry_id!r}")
    shutil.rmtree(path)
    logger.info("purged trash entry %s", entry_id)
