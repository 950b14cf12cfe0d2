"""trtq — an INT8 deployment pipeline for NVIDIA TensorRT and ONNX Runtime.

The public Python API (see the README's "Python API"):

* :func:`load_job` — a job file (plus ``--set``-style overrides) → a validated :class:`Job`;
* :func:`build` — the job built → :class:`BuildResult` (``out_dir``, ``report``);
* :func:`evaluate` — an existing build evaluated again → :class:`BuildResult`;
* :class:`TrtqError` — every user error (job, model, data, output, backend, cache), one line.

They are imported on first use, so ``import trtq`` stays light.
"""

__version__ = "0.1.0"

__all__ = ["BuildResult", "Job", "TrtqError", "build", "evaluate", "load_job", "__version__"]

_LAZY = {"BuildResult": "api", "Job": "api", "build": "api", "evaluate": "api", "load_job": "api",
         "TrtqError": "errors"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'trtq' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
