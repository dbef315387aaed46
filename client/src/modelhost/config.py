"""Where `modelhost login` keeps the credentials: one JSON file, readable by its owner only.

The folder is the user's configuration folder for the application as Click names it
(`~/.config/modelhost` on Linux, honouring XDG_CONFIG_HOME); MODELHOST_CONFIG_DIR moves it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import click

from modelhost.errors import UsageError

FILENAME = "credentials.json"


def config_dir() -> Path:
    return Path(os.environ.get("MODELHOST_CONFIG_DIR") or click.get_app_dir("modelhost"))


def credentials_path() -> Path:
    return config_dir() / FILENAME


def load_credentials() -> dict[str, Any]:
    """The stored credentials, or {} when nobody logged in."""
    path = credentials_path()
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError:
        raise UsageError(f"{path} is not valid JSON; run `modelhost logout` and log in again.") from None


def save_credentials(data: dict[str, Any]) -> Path:
    """Replace the stored credentials; the file is created 0600 (never readable by others, not even briefly)."""
    folder = config_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / FILENAME
    # mkstemp creates the file 0600; the rename makes the change all or nothing.
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".credentials-", suffix=".json")
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(data, out, indent=2)
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def delete_credentials() -> bool:
    """Forget the stored credentials; False when there were none."""
    try:
        credentials_path().unlink()
        return True
    except FileNotFoundError:
        return False
