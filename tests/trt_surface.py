"""Checks that every TensorRT name trtq's glue uses exists in TensorRT's published Python bindings.

TensorRT cannot be installed on trtq's build machines, but NVIDIA's bindings wheels
(``tensorrt-cu12-bindings`` for 10.x, ``tensorrt-cu13-bindings`` for 11.x) install without the
libraries, and their compiled module ``tensorrt_bindings/tensorrt.so`` holds every class,
method, property and enum-member name as a NUL-terminated string (the linker may share a
string's tail with a longer one, so a name counts as present when ``name\\0`` occurs). Names
defined in the package's ``__init__.py`` (``nptype``, ``__version__``…) count too.

What the glue uses is read from its source: every attribute chain on the ``trt`` module
(``trt.BuilderFlag.INT8`` → ``BuilderFlag``, ``INT8`` and the qualified ``BuilderFlag.INT8``),
every attribute read or call on other objects (``config.set_memory_pool_limit``), and the
methods a class derived from a TensorRT class overrides — minus attributes of trtq's own
objects (on ``self``, on known local helpers, or listed in :data:`OWN_ATTRS`).

Which modules must fit which versions: :data:`GLUE`. Names NVIDIA removed in 11.x
(:data:`REMOVED_IN_11`, from "Migrating from TensorRT 10.x to 11.x") must not appear in the
modules used on 11.x.
"""

from __future__ import annotations

import ast
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

# module of trtq.trt → the TensorRT major versions whose path uses it
GLUE = {"builder": ("10", "11"), "runner": ("10", "11"), "implicit": ("10",), "calibrators": ("10",),
        "legacy": ("10",)}  # legacy: the 8.6 path; no 8.6 bindings wheel exists, 10.x still has its names

REMOVED_IN_11 = {
    "BuilderFlag.INT8", "BuilderFlag.FP16", "BuilderFlag.BF16", "BuilderFlag.FP8",
    "BuilderFlag.OBEY_PRECISION_CONSTRAINTS", "BuilderFlag.PREFER_PRECISION_CONSTRAINTS",
    "int8_calibrator", "set_calibration_profile", "get_calibration_profile",
    "IInt8Calibrator", "IInt8EntropyCalibrator", "IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator",
    "IInt8LegacyCalibrator", "CalibrationAlgoType", "precision", "set_output_type",
}

# bases whose attributes are never TensorRT's (trtq's own objects, stdlib and numpy modules)
OWN_BASES = {"self", "np", "os", "re", "time", "json", "importlib", "options", "rt", "implicit", "p", "t", "Path",
             "facts", "feeder", "legacy"}
# trtq's own helpers kept on ``self`` (``self.rt.malloc`` is CUDA glue, ``self.engine.…`` is TensorRT)
OWN_SELF_ATTRS = {"rt", "feeder", "logger", "buffers", "dtypes", "input_names", "output_names"}
# attributes of Python builtins and of trtq objects reached through other names
OWN_ATTRS = {"last_error", "messages", "append", "items", "splitlines", "is_file", "read_bytes", "join", "split",
             "values", "keys", "get", "nbytes", "with_name", "unlink", "mkdir", "write_bytes", "parent", "clear",
             "__version__", "__init__", "__name__", "__qualname__"}


def names_in_binary(data: bytes, candidates: set[str]) -> set[str]:
    return {n for n in candidates if (n.encode() + b"\0") in data}


def _init_names(source: str) -> set[str]:
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


@dataclass
class Bindings:
    """One bindings wheel: its version and a way to ask which names it has."""

    version: str
    so: bytes
    init_names: set[str] = field(default_factory=set)

    @classmethod
    def from_wheel(cls, wheel: Path) -> Bindings:
        with zipfile.ZipFile(wheel) as z:
            so = z.read("tensorrt_bindings/tensorrt.so")
            init = z.read("tensorrt_bindings/__init__.py").decode()
        version = wheel.name.split("-")[1]
        return cls(version, so, _init_names(init))

    @property
    def major(self) -> str:
        return self.version.split(".")[0]

    def missing(self, names: set[str]) -> set[str]:
        return names - names_in_binary(self.so, names) - self.init_names


def _chain(node: ast.AST) -> list[str] | None:
    """``trt.A.B`` → ['A', 'B']; None when the chain is not rooted at the name ``trt``."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id == "trt":
        return parts[::-1]
    return None


def _names(node: ast.AST) -> list[str]:
    """``a.b.c`` → ['a', 'b', 'c']; [] when the chain does not start at a plain name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return [node.id, *parts[::-1]] if isinstance(node, ast.Name) else []


@dataclass
class Usage:
    leaves: set[str] = field(default_factory=set)
    qualified: set[str] = field(default_factory=set)


def used_names(source: str) -> Usage:
    tree = ast.parse(source)
    use = Usage()
    inner: set[int] = set()  # attribute nodes that are part of a longer trt.… chain
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            chain = _chain(node)
            if chain is not None:
                use.leaves |= set(chain)
                use.qualified.add(".".join(chain))
                sub = node.value
                while isinstance(sub, ast.Attribute):
                    inner.add(id(sub))
                    sub = sub.value
                continue
            root = _names(node.value)
            if root and (root[0] in OWN_BASES - {"self"} or (root[0] == "self" and (len(root) == 1 or root[1] in OWN_SELF_ATTRS))):
                continue
            if node.attr in OWN_ATTRS or node.attr.startswith("_"):
                continue
            use.leaves.add(node.attr)
        elif isinstance(node, ast.ClassDef) and node.bases:
            # a class derived from a TensorRT class (trt.X or a base taken from trt) overrides its methods
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and not item.name.startswith("_") and item.name not in OWN_ATTRS:
                    use.leaves.add(item.name)
    use.leaves.discard("trt")
    return use


def glue_sources() -> dict[str, str]:
    here = Path(__file__).parents[1] / "trtq" / "trt"  # this file lives in tests/; the glue in trtq/trt/
    return {m: (here / f"{m}.py").read_text() for m in GLUE}


def check(bindings: list[Bindings], sources: dict[str, str] | None = None) -> list[str]:
    """Problems (empty when every used name exists where it must and no removed name is used on 11.x)."""
    sources = glue_sources() if sources is None else sources
    problems = []
    for module, majors in GLUE.items():
        if module not in sources:
            continue
        use = used_names(sources[module])
        for b in bindings:
            if b.major not in majors:
                continue
            for name in sorted(b.missing(use.leaves)):
                problems.append(f"trtq/trt/{module}.py uses '{name}', which TensorRT {b.version}'s bindings lack")
            if int(b.major) >= 11:
                for name in sorted((use.qualified | use.leaves) & REMOVED_IN_11):
                    problems.append(f"trtq/trt/{module}.py runs on TensorRT {b.version} but uses '{name}', removed in 11.x")
    return problems
