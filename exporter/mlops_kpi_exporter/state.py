"""What must survive a restart, as small JSON documents in the state directory (config `state_dir`):
one file per source and kind, e.g. the Cost Explorer calls made today, or a FOCUS source's totals of
the files it has read.

JSON, never pickle: the directory may be writable by others, and reading a pickle runs code. Every
document carries a format version; a file of another version is ignored. A missing file is a fresh
start; an unreadable or corrupt one is one warning naming it, and a fresh start, never a crash. A
write goes to a temporary file first, then replaces the old one (os.replace), so a crash never
leaves half a file. A directory that cannot be written is a warning, once, and the exporter goes on
without persisting.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
_warned_lock = threading.Lock()
_warned_dirs: set[Path] = set()  # unwritable state directories already warned about (once each)


def file_name(kind: str, name: str) -> str:
    """A safe file name for a source's document: only letters, digits, `_` and `-` from the name (no
    `/`, no `..`), and a hash of the whole name, so that names differing in a dropped character differ."""
    readable = re.sub(r"[^A-Za-z0-9_-]+", "_", name)[:40]
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return f"{kind}-{readable}-{digest}.json"


class StateFile:
    """One source's document of one kind in the state directory."""

    def __init__(self, folder: Path, kind: str, name: str, version: int = 1):
        if not re.fullmatch(r"[a-z][a-z0-9-]*", kind):
            raise ValueError(f"state kind {kind!r}: lower-case letters, digits and '-' only")
        self.folder = Path(folder)
        self.path = self.folder / file_name(kind, name)
        self.kind, self.version = kind, version

    def load(self, parse: Callable[[dict], T]) -> T | None:
        """`parse` of the stored document; None for a fresh start (no file, another version, or one
        that cannot be read or parsed: that one is said in a warning)."""
        try:
            document = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:  # a directory in its place, no permission, not JSON
            log.warning("state file %s cannot be read (%s): starting afresh", self.path, _reason(exc))
            return None
        if not isinstance(document, dict) or document.get("kind") != self.kind:
            log.warning("state file %s is not a %s document: starting afresh", self.path, self.kind)
            return None
        if document.get("version") != self.version:
            log.info("state file %s is of format version %r, not %d: ignored", self.path, document.get("version"),
                     self.version)
            return None
        try:
            return parse(document.get("data"))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("state file %s is corrupt (%s): starting afresh", self.path, _reason(exc))
            return None

    def save(self, data: dict) -> bool:
        """Write the document (atomically); False if it could not be (warned once per directory)."""
        document = {"kind": self.kind, "version": self.version, "data": data}
        temporary = None
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=".tmp", dir=self.folder)
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(document, out, separators=(",", ":"))
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
            return True
        except OSError as exc:
            if temporary is not None:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
            with _warned_lock:
                first = self.folder not in _warned_dirs
                _warned_dirs.add(self.folder)
            if first:
                log.warning("state directory %s cannot be written (%s): going on without keeping state across "
                            "restarts (set state_dir to a writable folder)", self.folder, _reason(exc))
            else:
                log.debug("state file %s not written: %s", self.path, _reason(exc))
            return False


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {str(exc)[:120]}"
