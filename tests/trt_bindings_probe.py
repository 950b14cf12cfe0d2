"""Run inside a subprocess whose ``tensorrt`` is one of NVIDIA's bindings wheels, loaded against
a stub of the few C entry points it resolves from libnvinfer / libnvonnxparser /
libnvinfer_plugin (see tests/test_trt_bindings.py). Prints one JSON document: the problems found
(empty lists when trtq's glue fits these bindings) and what was checked, so a test can tell the
check was not vacuous.

    (a) every call trtq's glue makes on a TensorRT object or class fits a pybind11 overload of
        that name (argument count, keyword names), read from the bindings' own signatures;
    (b) 10.x: trtq's calibrator classes subclass the real IInt8EntropyCalibrator2 /
        IInt8MinMaxCalibrator; get_batch_size and get_algorithm are called through the C++
        base (the trampoline converts trtq's answer), get_batch / read_calibration_cache /
        write_calibration_cache are called with what the builder passes and checked against
        the types the signatures promise;
    (c) the flags, enums, Dims and profiles the backend builds, with the real module.
"""

from __future__ import annotations

import ast
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import tensorrt as trt
import trt_surface as surface

from trtq.trt import builder as trt_builder
from trtq.trt.feeder import CalibrationFeeder, FeedSpec, HostAllocator

MAJOR = str(trt.__version__).split(".")[0]


def _split_params(text: str) -> list[str]:
    depth, cur, out = 0, "", []
    for ch in text:
        depth += ch in "[("
        depth -= ch in "])"
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def overloads() -> dict[str, list[list[tuple[str, bool]]]]:
    """method name → its overloads, each a list of (parameter, has a default), self excluded."""
    found: dict[str, list] = {}
    for cls in [v for v in vars(trt).values() if isinstance(v, type)]:
        for name, attr in vars(cls).items():
            doc = getattr(attr, "__doc__", None) or ""
            key = cls.__name__ if name == "__init__" else name
            for m in re.finditer(rf"^(?:\d+\. )?{re.escape(name)}\((.*)\) -> ", doc, re.MULTILINE):
                params = _split_params(m.group(1))
                if params and params[0].startswith("self"):
                    params = params[1:]
                sig = [(p.split(":")[0].strip(), "=" in p) for p in params]
                found.setdefault(key, []).append(sig)
    return found


def _fits(sig, n_pos: int, keywords: set[str]) -> bool:
    names = [p for p, _ in sig]
    if n_pos > len(sig) or not keywords <= set(names[n_pos:]):
        return False
    return all(default or i < n_pos or p in keywords for i, (p, default) in enumerate(sig))


def check_calls(sigs: dict, sources: dict[str, str]) -> tuple[list[str], int]:
    """(calls that fit no overload, how many calls were checked)."""
    problems, checked = [], 0
    for module, majors in surface.GLUE.items():
        if MAJOR not in majors:
            continue
        tree = ast.parse(sources[module])
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            name, root = node.func.attr, surface._names(node.func.value)
            own = root and (root[0] in surface.OWN_BASES - {"self"} or root[0] == "self")
            starred = any(isinstance(a, ast.Starred) for a in node.args)
            if name not in sigs or own or name in surface.OWN_ATTRS or starred:
                continue
            checked += 1
            keywords = {k.arg for k in node.keywords}
            if not any(_fits(sig, len(node.args), keywords) for sig in sigs[name]):
                problems.append(f"trtq/trt/{module}.py:{node.lineno}: {name}() with {len(node.args)} positional "
                                f"argument(s) and keywords {sorted(keywords)} fits no overload in TensorRT "
                                f"{trt.__version__}: {sigs[name]}")
    return problems, checked


def check_calibrators(tmp: Path) -> tuple[list[str], list[str]]:
    """(problems, what ran) for trtq's calibrator classes on the real base classes (10.x)."""
    from trtq.trt.calibrators import ALGORITHMS, calibrator_class

    problems, ran = [], []
    expected = {"entropy": trt.CalibrationAlgoType.ENTROPY_CALIBRATION_2,
                "minmax": trt.CalibrationAlgoType.MINMAX_CALIBRATION}
    specs = [FeedSpec("x", (2, 3), np.dtype("float32"))]
    for kind, base_name in ALGORITHMS.items():
        base = getattr(trt, base_name)
        cache = b"TRT-101601-EntropyCalibration2\nx: 3c010a14\n"
        feeder = CalibrationFeeder(iter([{"x": np.ones((2, 3), np.float32)}]), specs, HostAllocator(),
                                   cache_in=cache, cache_out=tmp / f"{kind}.cache")
        cal = calibrator_class(trt, kind)(feeder)
        checks = {
            "is a subclass of the real base": isinstance(cal, base) and isinstance(cal, trt.IInt8Calibrator),
            "get_batch_size via C++ is 1": base.get_batch_size(cal) == 1,
            "get_algorithm via C++": base.get_algorithm(cal) == expected[kind],
        }
        ptrs = cal.get_batch(["x"])  # what the builder passes: the input names
        checks["get_batch gives one int pointer per name"] = isinstance(ptrs, list) and len(ptrs) == 1 and \
            all(isinstance(p, int) for p in ptrs)
        checks["get_batch gives None at the end"] = cal.get_batch(["x"]) is None
        got = cal.read_calibration_cache()
        checks["read_calibration_cache gives a buffer"] = bytes(memoryview(got)) == cache
        cal.write_calibration_cache(memoryview(b"TRT-101601-X\n"))  # TensorRT hands a buffer
        checks["write_calibration_cache takes a buffer"] = (tmp / f"{kind}.cache").read_bytes() == b"TRT-101601-X\n"
        feeder.raise_pending()
        problems += [f"{base_name}: {k}" for k, ok in checks.items() if not ok]
        ran += [f"{base_name}: {k}" for k in checks]
    return problems, ran


class _WrongBatchSize(getattr(trt, "IInt8EntropyCalibrator2", object)):
    def __init__(self):
        trt.IInt8EntropyCalibrator2.__init__(self)

    def get_batch_size(self):
        return "one"  # not an int: the trampoline cannot convert it


def check_planted() -> bool:
    """The C++ path is real: a get_batch_size returning a str does not come back as a number we gave."""
    return trt.IInt8EntropyCalibrator2.get_batch_size(_WrongBatchSize()) != "one" and \
        trt.IInt8EntropyCalibrator2.get_batch_size(_WrongBatchSize()) == -1


def check_building_blocks() -> list[str]:
    problems = []
    flags = trt_builder.network_flags(trt, strongly_typed=True)
    want = (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)) if MAJOR == "10" else 0
    if flags != want or not trt_builder.has_strong_typing(trt):
        problems.append(f"network flags {flags}, want {want}")
    if MAJOR == "10":
        from trtq.trt import legacy

        if legacy.network_flags(trt) != 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH):
            problems.append("legacy explicit-batch flag")
    profiles = trt_builder.resolve_profiles({"x": (-1, 3, 8, 8)}, {}, [4, 8])
    for kind in ("min", "opt", "max"):
        dims = trt.Dims(getattr(profiles["x"], kind))
        if tuple(dims) != getattr(profiles["x"], kind):
            problems.append(f"Dims of the {kind} profile")
    logger = trt_builder.make_logger(trt)
    logger.log(trt.ILogger.Severity.ERROR, "planted error")
    logger.log(trt.ILogger.Severity.INFO, "not kept")
    if logger.last_error() != "planted error" or len(logger.messages) != 1:
        problems.append(f"logger kept {logger.messages}")
    for name in ("WORKSPACE",):
        if not hasattr(trt.MemoryPoolType, name):
            problems.append(f"MemoryPoolType.{name}")
    return problems


PLANTS = {  # a wrong argument count and a wrong keyword in the builder glue must both be found
    "config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)":
        "config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE)",
    "builder.create_network(flags)": "builder.create_network(flag=flags)",
}


def check_planted_calls(sigs: dict) -> int:
    """How many of the planted wrong calls :func:`check_calls` reports."""
    sources = surface.glue_sources()
    for good, bad in PLANTS.items():
        assert good in sources["builder"], good
        sources["builder"] = sources["builder"].replace(good, bad)
    return len(check_calls(sigs, sources)[0])


def main() -> None:
    sigs = overloads()
    calls, checked = check_calls(sigs, surface.glue_sources())
    doc = {"version": str(trt.__version__), "call_problems": calls, "calls_checked": checked,
           "signatures": len(sigs), "block_problems": check_building_blocks(),
           "planted_calls_found": check_planted_calls(sigs)}
    if MAJOR == "10":
        with tempfile.TemporaryDirectory() as tmp:
            doc["calibrator_problems"], doc["calibrator_checks"] = check_calibrators(Path(tmp))
        doc["planted_batch_size_refused"] = check_planted()
    json.dump(doc, sys.stdout)


if __name__ == "__main__":
    main()
