"""Importing user code named in a job: ``path/to/file.py:name`` or ``package.module:name``."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from .errors import JobError, one_line


def import_callable(ref: str, key: str):
    """The object ``ref`` names; a one-line :class:`JobError` naming ``key`` when it can't be had."""
    mod_name, _, attr = ref.rpartition(":")
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name)
            spec = importlib.util.spec_from_file_location(f"trtq_user_{path.stem}", path)
            if spec is None or not path.is_file():
                raise ImportError(f"no file {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
        return getattr(module, attr)
    except (ImportError, AttributeError, SyntaxError) as exc:
        raise JobError(f"{key}: cannot import '{ref}' ({one_line(exc)}); give 'file.py:name' or 'package.module:name'") from None
    except Exception as exc:  # noqa: BLE001 - the module's own code raised while it was imported
        raise JobError(f"{key}: importing '{ref}' raised {one_line(exc)}; fix that code") from None
