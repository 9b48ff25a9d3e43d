"""The model repository: ROOT/NAME/VERSION/ for many NAMEs (TF Serving's layout).

A worker serves every model in its repository, or those named with --models. A version
appears atomically: it is written into a hidden staging directory beside the versions
and renamed to its number only when complete, so a worker polling for new versions
(worker/versions.py) never sees half a model.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from worker.serving import ModelError

# Model names become Consul Meta keys, URL path segments and directory names.
NAME = re.compile(r"[A-Za-z0-9_-]{1,48}")


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise ModelError(f"model name {name!r}: use 1-48 letters, digits, '_' or '-'")
    return name


def versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def model_names(root: Path, wanted: tuple[str, ...] = ()) -> list[str]:
    """The models to serve: `wanted`, each checked, or every NAME under `root` with a version."""
    if wanted:
        for name in wanted:
            if not versions(root / check_name(name)):
                raise ModelError(f"{root / name} has no numeric version directory (expected {root / name}/1/)")
        return list(wanted)
    names = sorted(p.name for p in root.iterdir() if NAME.fullmatch(p.name) and versions(p)) if root.is_dir() else []
    if not names:
        raise ModelError(f"{root} holds no model (expected {root}/NAME/1/)")
    return names


def write_version(model_dir: Path, fill: Callable[[Path], None]) -> Path:
    """Write the next version of a model: `fill(staging_dir)` writes the files, then the
    directory is renamed to the next free number. On any error nothing is left behind."""
    created = not model_dir.exists()
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
    try:
        fill(staging)
        staging.chmod(0o755)  # mkdtemp makes it private
        while True:
            target = model_dir / str((versions(model_dir) or [0])[-1] + 1)
            try:
                os.rename(staging, target)  # atomic; fails if another writer took the number
                return target
            except OSError:
                if not target.exists():
                    raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(model_dir, ignore_errors=True)
        raise
