"""Saved, versioned models: everything a case study needs to serve, in ``models/<case>/<version>/``.

    saved = save_model("images", write_files, metrics={...}, data={...})  # -> models/images/v3
    saved = open_model("models/images", "images")     # the newest version; every file is checked first
    saved.file("model.pt2"), saved.config, saved.metadata, saved.about()

A version folder (``v1``, ``v2``, ...) holds the case's files (weights, preprocessing, vocabulary and
id maps), ``config.json`` (what serving needs besides the weights: thresholds, classes, sizes) and
``metadata.json``:

- ``files``: the sha256 and size of every other file in the folder;
- ``data``: the sha256 of the data it was trained on (the checksums ``lm4f.data`` verifies);
- ``metrics``: its figures on the case's test split;
- ``versions``: Python and the libraries that wrote it; ``git``: the commit (and whether the
  working tree had changes); ``created_at`` (UTC); ``size`` (``LM4F_SIZE``); ``rebuild``: the
  command that makes it again.

``open_model`` refuses a folder whose ``metadata.json`` is missing or belongs to another case, and
any file that is missing, truncated or not the one that was saved (a foreign file): the error
(``ModelFileError``) names the file and the command that rebuilds the model. Files that run code
when loaded (joblib pickles) are therefore only loaded after their checksum matched.

The same file check (``verify_files``) guards the assistant's index (``lm4f.retrieval``) and the
local chat model (``lm4f.local_lm``). Models live under ``models/`` (git-ignored) or the folder
named by ``LM4F_MODELS``; ``python -m lm4f.train CASE`` writes them.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from lm4f.data import sha256_file
from lm4f.utils import REPO_ROOT, SIZE

__all__ = [
    "FORMAT",
    "METADATA",
    "CONFIG",
    "ModelFileError",
    "SavedModel",
    "models_dir",
    "rebuild_command",
    "file_checksums",
    "verify_files",
    "save_model",
    "open_model",
    "versions_in",
]

FORMAT = "lm4f-model/1"
METADATA = "metadata.json"
CONFIG = "config.json"
VERSION_NAME = re.compile(r"^v(\d+)$")
BASE_PACKAGES = ("numpy", "torch", "scikit-learn", "pandas")

log = logging.getLogger("lm4f.saved_models")


class ModelFileError(RuntimeError):
    """A saved model's folder or file is missing, truncated or foreign. The message names the file and the fix."""


def models_dir() -> Path:
    """Where models are saved and looked for: ``$LM4F_MODELS`` if set, else ``models`` in the working folder."""
    return Path(os.environ.get("LM4F_MODELS") or "models")


def rebuild_command(case: str, root=None) -> str:
    """The command that trains and saves ``case`` again (with ``--models`` when ``root`` is not the default)."""
    command = f"python -m lm4f.train {case}"
    if root is not None and Path(root) != models_dir():
        command += f" --models {root}"
    return (f"LM4F_SIZE={SIZE} " if SIZE != "ci" else "") + command


# ---------------------------------------------------------------------------------------------
# File checksums: one mechanism for every saved folder
# ---------------------------------------------------------------------------------------------
def file_checksums(folder, skip: Iterable[str] = (METADATA,)) -> dict[str, dict]:
    """``{relative path: {"sha256", "bytes"}}`` of every file under ``folder`` (sorted), except ``skip``."""
    folder = Path(folder)
    skip = set(skip)
    checksums = {}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_file() and name not in skip:
            checksums[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return checksums


def verify_files(folder, files: dict, problem: Callable[[Path, str], Exception], manifest: str = METADATA,
                 check_contents: bool = True) -> None:
    """Check each file listed in a manifest: present, of the recorded size, with the recorded sha256.

    ``files`` maps relative paths to ``{"sha256", "bytes"}`` (or to a bare sha256, as older
    assistant indexes record them). ``problem(path, what)`` builds the exception to raise, e.g.
    ``ModelFileError`` with the rebuild command; ``what`` reads "is missing" or "is corrupt or
    truncated: ...". With ``check_contents=False`` only presence is checked.
    """
    folder = Path(folder)
    for name, expected in files.items():
        if isinstance(expected, str):
            expected = {"sha256": expected}
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts:
            raise problem(folder / manifest, f"lists a file outside its folder ({name!r})")
        path = folder / relative
        if not path.is_file():
            raise problem(path, "is missing")
        if not check_contents:
            continue
        size = path.stat().st_size
        if "bytes" in expected and size != expected["bytes"]:
            raise problem(path, f"is corrupt or truncated: it has {size:,} bytes, {manifest} records "
                                f"{expected['bytes']:,}")
        if sha256_file(path) != expected["sha256"]:
            raise problem(path, f"is corrupt or truncated: its sha256 differs from the one in {manifest} "
                                "(a changed or foreign file)")


# ---------------------------------------------------------------------------------------------
# A saved model
# ---------------------------------------------------------------------------------------------
@dataclass
class SavedModel:
    """A verified version folder: ``folder``, its ``metadata`` and its ``config``."""

    folder: Path
    metadata: dict
    config: dict = field(default_factory=dict)

    @property
    def case(self) -> str:
        return self.metadata["case"]

    @property
    def version(self) -> str:
        return self.metadata["version"]

    @property
    def rebuild(self) -> str:
        return self.metadata.get("rebuild") or rebuild_command(self.case)

    def file(self, name: str) -> Path:
        return self.folder / name

    def problem(self, name: str, what: str) -> ModelFileError:
        """The error for a file that passed its checksum but cannot be used (names the file and the fix)."""
        return ModelFileError(_message(self.case, self.folder / name, what, self.rebuild))

    def about(self) -> dict:
        """What ``/ready`` reports: case, version, when and from which commit it was built, its test metrics."""
        git = self.metadata.get("git") or {}
        return {"case": self.case, "version": self.version, "created_at": self.metadata.get("created_at"),
                "git_commit": git.get("commit"), "size": self.metadata.get("size"),
                "metrics": self.metadata.get("metrics", {})}


def _message(case: str, path: Path, what: str, rebuild: str) -> str:
    return f"Saved {case} model: {path} {what}.\nFix: rebuild it with `{rebuild}`."


def versions_in(case_folder) -> list[Path]:
    """The version folders (``v1``, ``v2``, ...) under ``case_folder``, oldest first."""
    case_folder = Path(case_folder)
    if not case_folder.is_dir():
        return []
    found = [(int(match.group(1)), path) for path in case_folder.iterdir()
             if path.is_dir() and (match := VERSION_NAME.match(path.name))]
    return [path for _, path in sorted(found)]


def _git() -> dict | None:
    """The commit of the repository this library was loaded from, and whether tracked files have changes."""
    def run(*args):
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=10)

    try:
        head = run("rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        dirty = run("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def _library_versions(packages: Iterable[str]) -> dict:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in dict.fromkeys([*BASE_PACKAGES, *packages, "lm4f"]):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def save_model(case: str, write: Callable[[Path], dict], *, metrics: dict, data: dict,
               training: dict | None = None, packages: Iterable[str] = (), root=None,
               rebuild: str | None = None) -> SavedModel:
    """Write a new version of ``case`` under ``root`` (default ``models_dir()``) and return it, verified.

    ``write(folder)`` writes the case's files into an empty folder and returns the config that
    serving needs besides them (thresholds, classes, sizes), saved as ``config.json``. ``metrics``
    (test-split figures), ``data`` (data checksums) and ``training`` (settings, seconds) go to
    ``metadata.json`` with the library versions (``packages`` adds to numpy, torch, scikit-learn and
    pandas), the git commit and the checksum of every file. The folder is written beside the others
    and renamed into place when complete, so a half-written version is never loaded. The version is
    one more than the highest ``vN`` present. ``rebuild`` is the command that makes it again
    (default ``python -m lm4f.train CASE``; a model trained on your own data gives its options).
    """
    root = Path(root) if root is not None else models_dir()
    case_folder = root / case
    existing = versions_in(case_folder)
    version = f"v{int(VERSION_NAME.match(existing[-1].name).group(1)) + 1 if existing else 1}"
    staging = case_folder / f".{version}.building"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        config = write(staging)
        (staging / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        metadata = {
            "format": FORMAT, "case": case, "version": version,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "size": SIZE, "rebuild": rebuild or rebuild_command(case, root), "git": _git(),
            "versions": _library_versions(packages), "data": data, "metrics": metrics, "training": training or {},
            "files": file_checksums(staging),
        }
        (staging / METADATA).write_text(json.dumps(metadata, indent=2) + "\n")
        staging.rename(case_folder / version)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return open_model(case_folder / version, case)


def open_model(path, case: str) -> SavedModel:
    """Verify and open a saved model of ``case``: a version folder, or a case folder (its newest version).

    Raises ``ModelFileError`` naming the folder or file and the rebuild command when the folder is
    missing or holds no version, when ``metadata.json`` is missing, unreadable, of another format
    or of another case, or when any file it lists is missing, truncated or changed. A model written
    by other library versions loads, with a logged warning naming them.
    """
    path = Path(path)
    if path.is_dir() and not (path / METADATA).exists() and versions_in(path):
        path = versions_in(path)[-1]
    # models/<case>/<vN> or models/<case>: the rebuild command writes into that models folder
    guessed_root = path.parent.parent if VERSION_NAME.match(path.name) else path.parent if path.name == case else None
    rebuild = rebuild_command(case, guessed_root)
    if not path.is_dir():
        raise ModelFileError(f"Saved {case} model: there is no folder {path}.\nFix: build one with `{rebuild}` "
                             f"(it writes {models_dir() / case}/v1, v2, ...), or pass --model the folder it wrote.")
    metadata_path = path / METADATA
    if not metadata_path.is_file():
        raise ModelFileError(_message(case, metadata_path, "is missing (no saved version here)", rebuild))
    try:
        metadata = json.loads(metadata_path.read_text())
        files = dict(metadata["files"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        what = f"is not a model metadata file ({error})"
        raise ModelFileError(_message(case, metadata_path, what, rebuild)) from None
    rebuild = metadata.get("rebuild") or rebuild
    if metadata.get("format") != FORMAT:
        raise ModelFileError(_message(case, metadata_path, f"has format {metadata.get('format')!r}; this library "
                                                           f"reads {FORMAT!r}", rebuild))
    if metadata.get("case") != case:
        raise ModelFileError(_message(case, metadata_path, f"describes a {metadata.get('case')!r} model, not a "
                                                           f"{case!r} one (a foreign folder)",
                                      rebuild_command(case, guessed_root)))
    if CONFIG not in files:
        raise ModelFileError(_message(case, path / CONFIG, f"is not listed in {METADATA}", rebuild))
    verify_files(path, files, lambda file, what: ModelFileError(_message(case, file, what, rebuild)))
    try:
        config = json.loads((path / CONFIG).read_text())
    except ValueError as error:
        raise ModelFileError(_message(case, path / CONFIG, f"cannot be read ({error})", rebuild)) from None
    built_with = metadata.get("versions", {})
    running = _library_versions(name for name in built_with if name != "python")
    differing = {name: (built, running.get(name)) for name, built in built_with.items()
                 if name not in ("python", "lm4f") and built is not None and running.get(name) != built}
    if differing:
        listed = ", ".join(f"{name} {built} (running {now})" for name, (built, now) in differing.items())
        log.warning("the %s model in %s was saved with %s; if it misbehaves, rebuild it with `%s`",
                    case, path, listed, rebuild)
    return SavedModel(folder=path, metadata=metadata, config=config)
