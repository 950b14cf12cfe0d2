"""The package's shape: rooms (one folder or module per stage of the data flow) may import only
the rooms listed for them in docs/ARCHITECTURE.md, no module imports itself round a circle, and
TensorRT / CUDA bindings are imported only inside functions. Every import statement counts,
including those inside functions (lazy imports are still dependencies)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "trtq"

# room → the rooms it may import (besides itself). Same table as docs/ARCHITECTURE.md.
BASE = {"base"}
ALLOWED = {
    "base": set(),
    "job": BASE,
    "model": BASE | {"job"},
    "data": BASE | {"job", "model"},
    "runtime": BASE | {"model"},
    "calib": BASE | {"job", "model", "data", "runtime"},
    "quant": BASE | {"model", "calib"},
    "trt": BASE,
    "engine": BASE | {"job", "model", "calib", "quant", "runtime", "trt"},
    "evaluation": BASE | {"job", "model", "data", "runtime", "engine", "trt"},
    "report": BASE | {"job", "model"},
    "pipeline": BASE | {"job", "model", "data", "runtime", "calib", "quant", "engine", "evaluation", "report"},
    "runs": BASE | {"job", "runtime", "pipeline", "report"},
    "api": BASE | {"job", "pipeline"},
    "cli": BASE | {"job", "model", "calib", "engine", "evaluation", "pipeline", "report", "runs"},
}
BASE_MODULES = {"trtq", "trtq.errors", "trtq.progress", "trtq.plugins", "trtq.artifacts"}
GPU_MODULES = ("tensorrt", "cuda", "pycuda", "cupy")


def room(module: str) -> str:
    if module in BASE_MODULES:
        return "base"
    parts = module.split(".")
    if parts[1] in ("cli", "__main__"):
        return "cli"
    return parts[1]


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> dict[str, str]:
    return {module_name(p): p.read_text() for p in sorted(PACKAGE.rglob("*.py"))}


def imports(module: str, source: str, is_package: bool) -> list[tuple[str, int, bool]]:
    """(imported trtq module, line, at module level) for every import statement of ``module``."""
    tree = ast.parse(source)
    top = {id(n) for n in tree.body}
    out = []
    base = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = base[: len(base) - node.level + 1]
                stem = ".".join(pkg + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # 'from . import x' / 'from .pkg import mod' name modules; 'from .mod import f' names the module
            names = [stem]
            if stem.startswith("trtq"):
                names += [f"{stem}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            out.append((name, node.lineno, id(node) in top))
    return out


def graph(srcs: dict[str, str]) -> dict[str, set[str]]:
    packages = {m for m in srcs if (PACKAGE.parent / m.replace(".", "/") / "__init__.py").is_file()}
    edges: dict[str, set[str]] = {m: set() for m in srcs}
    for m, src in srcs.items():
        for name, _, _ in imports(m, src, m in packages):
            if name in srcs and name != m and name != "trtq":
                edges[m].add(name)
    return edges


def layer_problems(srcs: dict[str, str]) -> list[str]:
    problems = []
    for m, targets in graph(srcs).items():
        allowed = ALLOWED[room(m)] | {room(m)}
        for t in sorted(targets):
            if room(t) not in allowed:
                problems.append(f"{m} imports {t}: room '{room(m)}' may not import room '{room(t)}'")
    return problems


def cycles(srcs: dict[str, str]) -> list[list[str]]:
    edges = graph(srcs)
    found, state = [], {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for t in sorted(edges[m]):
            if state.get(t) == "open":
                found.append(path[path.index(t):] + [t] if t in path else [m, t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    return found


def gpu_problems(srcs: dict[str, str]) -> list[str]:
    packages = {m for m in srcs if (PACKAGE.parent / m.replace(".", "/") / "__init__.py").is_file()}
    return [f"{m}:{line} imports {name} at module level (GPU modules are imported lazily)"
            for m, src in srcs.items() for name, line, top in imports(m, src, m in packages)
            if top and name.split(".")[0] in GPU_MODULES]


def test_every_module_is_in_a_known_room():
    assert {room(m) for m in sources()} <= set(ALLOWED)


def test_no_room_imports_a_room_above_it():
    assert layer_problems(sources()) == []


def test_no_import_cycles():
    assert cycles(sources()) == []


def test_gpu_bindings_are_imported_lazily():
    assert gpu_problems(sources()) == []


@pytest.mark.parametrize("module, line", [
    ("trtq.calib.stats", "from ..pipeline.build import build\n"),  # statistics → the single build
    ("trtq.data.sources", "from ..job import Job\nfrom ..calib import methods\n"),  # data → ranges
    ("trtq.model.load", "    from ..runs import run\n"),  # even lazily, inside a function
])
def test_a_planted_back_edge_is_found(module, line):
    srcs = sources()
    body = srcs[module]
    if line.startswith("    "):
        body += "\n\ndef _planted():\n" + line
    else:
        body = line + body
    srcs[module] = body
    problems = layer_problems(srcs)
    assert any(p.startswith(f"{module} imports") for p in problems), problems


def test_a_planted_cycle_is_found():
    srcs = sources()
    srcs["trtq.calib.ranges"] = "from .cache import Range\n" + srcs["trtq.calib.ranges"]
    assert any({"trtq.calib.ranges", "trtq.calib.cache"} <= set(c) for c in cycles(srcs))


def test_a_planted_eager_gpu_import_is_found():
    srcs = sources()
    srcs["trtq.engine.tensorrt"] = "import tensorrt\n" + srcs["trtq.engine.tensorrt"]
    assert gpu_problems(srcs) == ["trtq.engine.tensorrt:1 imports tensorrt at module level (GPU modules are "
                                  "imported lazily)"]
