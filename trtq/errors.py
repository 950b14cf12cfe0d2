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


def one_line(exc: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message``, at most ``limit`` characters: another library's or user
    code's exception inside a one-line error."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[:limit - 1] + "…"
