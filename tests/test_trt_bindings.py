"""trtq's TensorRT glue against NVIDIA's real Python bindings (10.0.1, 10.16.1.11, 11.0.0.114,
11.4.0.106), not only their names: the bindings module imports once the nine C entry points it
resolves from libnvinfer, libnvonnxparser and libnvinfer_plugin exist, so the test compiles a
stub of them (each returns NULL or 0) with the system C compiler, imports each wheel against it
in a subprocess and runs ``tests/trt_bindings_probe.py`` there: every call the glue makes checked
against the pybind11 signatures, trtq's calibrators on the real base classes (get_batch_size and
get_algorithm through the C++ base), flags, enums, Dims, profiles and the logger.

Nothing here builds an engine: the stub has no TensorRT behind it (a Builder cannot be made).
Skipped with the reason where no C compiler or wheel is found; with TRTQ_REQUIRE_TRT_BINDINGS=1
(``make test``, hence CI) their absence fails.
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from test_trt_api_surface import EXPECTED, WHEELS

TESTS = Path(__file__).parent
STUB_C = """
#include <stddef.h>
void *createInferBuilder_INTERNAL(void *logger, int version) { return NULL; }
void *createInferRefitter_INTERNAL(void *engine, void *logger, int version) { return NULL; }
void *createInferRuntime_INTERNAL(void *logger, int version) { return NULL; }
void *createNvOnnxParserRefitter_INTERNAL(void *refitter, void *logger, int version) { return NULL; }
void *createNvOnnxParser_INTERNAL(void *network, void *logger, int version) { return NULL; }
void *getBuilderPluginRegistry(int capability) { return NULL; }
int getNvOnnxParserVersion(void) { return 0; }
void *getPluginRegistry(void) { return NULL; }
int initLibNvInferPlugins(void *logger, const char *ns) { return 0; }
"""
LIBS = ("nvinfer", "nvonnxparser", "nvinfer_plugin")


def _unavailable(msg: str):
    if os.environ.get("TRTQ_REQUIRE_TRT_BINDINGS"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="module")
def stub_libs(tmp_path_factory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        _unavailable("no C compiler (cc/gcc) to build the stub TensorRT libraries")
    lib = tmp_path_factory.mktemp("trt-stub-lib")
    (lib / "stub.c").write_text(STUB_C)
    for major in ("10", "11"):
        for name in LIBS:
            subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib / f"lib{name}.so.{major}"), str(lib / "stub.c")],
                           check=True, capture_output=True)
    return lib


def _wheel(version: str) -> Path:
    found = sorted(WHEELS.glob(f"tensorrt_cu1*_bindings-{version}-*.whl")) if WHEELS.is_dir() else []
    if not found:
        _unavailable(f"TensorRT bindings wheel {version} not in {WHEELS}; run 'make trt-bindings'")
    return found[0]


def _probe(version: str, libs: Path, tmp: Path) -> dict:
    """The probe's findings with ``tensorrt`` = the bindings of ``version`` over the stub libraries."""
    with zipfile.ZipFile(_wheel(version)) as z:
        for member in z.namelist():
            if member.startswith("tensorrt_bindings/"):
                target = tmp / "tensorrt" / member[len("tensorrt_bindings/"):]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(member))
    env = {**os.environ, "LD_LIBRARY_PATH": str(libs),
           "PYTHONPATH": os.pathsep.join([str(tmp), str(TESTS.parent), str(TESTS)])}
    run = subprocess.run([sys.executable, "-W", "ignore", str(TESTS / "trt_bindings_probe.py")], env=env, check=False,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


@pytest.mark.parametrize("version", sorted(EXPECTED))
def test_glue_fits_the_real_bindings(version, stub_libs, tmp_path):
    doc = _probe(version, stub_libs, tmp_path)
    assert doc["version"] == version
    assert doc["call_problems"] == [] and doc["block_problems"] == []
    # not vacuous: hundreds of signatures read, every builder/runner call checked, plants found
    assert doc["signatures"] > 300 and doc["calls_checked"] >= 15 and doc["planted_calls_found"] == 2
    if version.startswith("10."):
        assert doc["calibrator_problems"] == [] and len(doc["calibrator_checks"]) == 14
        assert doc["planted_batch_size_refused"]  # get_batch_size really went through C++
    else:
        assert "calibrator_problems" not in doc  # 11.x has no calibrators
