"""Where the exporter keeps what must survive a restart (state.py), when the config does not say
(`state_dir`): the first of these that can be written.

1. `.mlops-kpi-exporter-state` beside the config file, when the config was loaded from a file;
2. `$XDG_STATE_HOME/mlops-kpi-exporter` (an absolute XDG_STATE_HOME), else
   `~/.local/state/mlops-kpi-exporter`;
3. a folder of this user's in the system's temporary directory (kept only as long as it is).

Nothing is created here: a folder that does not exist yet counts as writable when its nearest
existing parent is.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

BESIDE_CONFIG = ".mlops-kpi-exporter-state"
APP = "mlops-kpi-exporter"


def can_write(folder: Path) -> bool:
    """Whether the folder can be written, or made and written (its nearest existing parent can)."""
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            return candidate.is_dir() and os.access(candidate, os.W_OK | os.X_OK)
    return False


def default_state_dir(config_dir: Path | None, environ: Mapping[str, str] = os.environ, home: Path | None = None,
                      writable: Callable[[Path], bool] = can_write) -> Path:
    """The default state_dir: `config_dir` is the config file's folder (None: not loaded from a file)."""
    candidates = []
    if config_dir is not None:
        candidates.append(Path(config_dir) / BESIDE_CONFIG)
    xdg = environ.get("XDG_STATE_HOME", "")
    if os.path.isabs(xdg):  # the XDG spec: a relative value is to be ignored
        candidates.append(Path(xdg) / APP)
    else:
        try:
            candidates.append((home or Path.home()) / ".local" / "state" / APP)
        except RuntimeError:  # no home directory to be found
            pass
    for folder in candidates:
        if writable(folder):
            return folder
    user = os.getuid() if hasattr(os, "getuid") else environ.get("USERNAME", "user")
    return Path(tempfile.gettempdir()) / f"{APP}-{user}"
