"""Atomic build outputs: everything is written into a hidden staging folder next to the
final one and moved into place only when the whole build succeeded. A failure or Ctrl-C
removes the staging folder, so no half-written artifact is ever left behind."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from ..errors import OutputError


@contextmanager
def staged_output(root: Path, name: str):
    """Yield a staging folder; on success it replaces ``root/name``."""
    final = root / name
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=root))
    except OSError as exc:
        raise OutputError(f"output: cannot write to {root} ({exc.strerror}); choose another folder with "
                          "--out DIR or the job's 'output:' key") from None
    committed = False
    try:
        yield staging
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=root))
            os.replace(final, old / name)
        os.replace(staging, final)
        committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if not committed:
            shutil.rmtree(staging, ignore_errors=True)
