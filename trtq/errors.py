"""Errors a user can cause. Each carries a one-line message naming the file, key or tensor
and what to do; the CLI prints it without a traceback and exits with status 2."""


class TrtqError(Exception):
    """Base of every user-facing error."""

    exit_code = 2


class JobError(TrtqError):
    """The job file is malformed, misspelled or has a value of the wrong type."""


class ModelError(TrtqError):
    """The model file is missing, not ONNX, or not something trtq can quantize."""


class DataError(TrtqError):
    """Calibration/evaluation data is missing, empty, non-finite or does not fit the model."""


class OutputError(TrtqError):
    """The output location cannot be written."""


class NoSpaceError(OutputError):
    """The disk filled while ``name`` was written into ``folder``."""

    def __init__(self, folder, name: str, hint: str = "choose another folder with --out"):
        import shutil
        from pathlib import Path

        self.folder, self.name, self.hint = folder, name, hint
        existing = next((p for p in (Path(folder), *Path(folder).parents) if p.exists()), Path("/"))
        try:
            free = f", {shutil.disk_usage(existing).free // 1024} KiB free"
        except OSError:
            free = ""
        super().__init__(f"{folder}: no space left on device writing {name}{free}; free some space there or {hint}")


class BackendError(TrtqError):
    """A backend (TensorRT, ONNX Runtime) is missing or refused the model."""


class CacheError(TrtqError):
    """A calibration cache is malformed or does not match the model."""
