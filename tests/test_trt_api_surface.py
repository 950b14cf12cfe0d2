"""Every TensorRT name trtq's glue uses exists in NVIDIA's published bindings for each version it
claims (10.0, 10.16, 11.0, 11.4), and no name removed in 11.x is used on the 11.x path.

The bindings wheels (``tensorrt-cu12-bindings`` 10.x, ``tensorrt-cu13-bindings`` 11.x) are
downloaded by ``make test`` into ``.cache/trt-bindings`` (``make trt-bindings``); with
TRTQ_REQUIRE_TRT_BINDINGS=1 (set by ``make test``, hence CI) their absence fails instead of skipping.
"""

import os
from pathlib import Path

import pytest

import trt_surface as surface

WHEELS = Path(os.environ.get("TRTQ_TRT_BINDINGS", Path(__file__).parents[1] / ".cache" / "trt-bindings"))
EXPECTED = {"10.0.1", "10.16.1.11", "11.0.0.114", "11.4.0.106"}


@pytest.fixture(scope="module")
def bindings():
    found = sorted(WHEELS.glob("tensorrt_cu1*_bindings-*.whl")) if WHEELS.is_dir() else []
    got = [surface.Bindings.from_wheel(w) for w in found]
    if {b.version for b in got} != EXPECTED:
        msg = (f"TensorRT bindings wheels {sorted(EXPECTED)} not all in {WHEELS} (found "
               f"{sorted(b.version for b in got)}); run 'make trt-bindings'")
        if os.environ.get("TRTQ_REQUIRE_TRT_BINDINGS"):
            pytest.fail(msg)
        pytest.skip(msg)
    return got


def test_every_used_name_exists_in_each_claimed_version(bindings):
    assert surface.check(bindings) == []
    # the check is not vacuous: it saw the calls the builder and runner make
    used = surface.used_names(surface.glue_sources()["builder"]).leaves
    assert {"build_serialized_network", "set_memory_pool_limit", "STRONGLY_TYPED", "create_timing_cache"} <= used
    used = surface.used_names(surface.glue_sources()["runner"]).leaves
    assert {"execute_async_v3", "set_tensor_address", "deserialize_cuda_engine", "get_engine_information"} <= used


def test_a_planted_wrong_name_fails(bindings):
    sources = surface.glue_sources()
    assert "set_memory_pool_limit" in sources["builder"]
    sources["builder"] = sources["builder"].replace("set_memory_pool_limit", "set_memroy_pool_limit", 1)
    problems = surface.check(bindings, sources)
    assert len(problems) == 4 and all("'set_memroy_pool_limit'" in p for p in problems)
    assert {p.split("TensorRT ")[1].split("'")[0] for p in problems} == EXPECTED


def test_a_removed_name_on_the_11_path_fails_but_is_fine_on_10(bindings):
    sources = surface.glue_sources()
    sources["builder"] += "\n\ndef planted(trt, config, calib):\n    config.set_flag(trt.BuilderFlag.INT8)\n" \
                          "    config.int8_calibrator = calib\n"
    problems = surface.check(bindings, sources)
    assert all("11." in p for p in problems), "10.x has these names"
    assert any("'int8_calibrator', removed in 11.x" in p for p in problems)
    assert any("'BuilderFlag.INT8', removed in 11.x" in p for p in problems)
    assert any("uses 'int8_calibrator', which TensorRT 11.4.0.106's bindings lack" in p for p in problems)


def test_the_removed_list_matches_the_bindings(bindings):
    # every removed name that is a name of its own (not an enum member like BuilderFlag.INT8)
    # is in both 10.x wheels and in neither 11.x wheel
    own = {n for n in surface.REMOVED_IN_11 if "." not in n}
    for b in bindings:
        missing = b.missing(own)
        assert missing == (own if b.major == "11" else set()), b.version


def test_implicit_path_modules_are_10_only_and_use_the_calibrator_family():
    assert surface.GLUE["implicit"] == ("10",) and surface.GLUE["calibrators"] == ("10",)
    assert surface.GLUE["legacy"] == ("10",)
    legacy = surface.used_names(surface.glue_sources()["legacy"])
    assert {"NetworkDefinitionCreationFlag.EXPLICIT_BATCH", "BuilderFlag.INT8"} <= legacy.qualified
    used = surface.used_names(surface.glue_sources()["implicit"])
    assert {"BuilderFlag.INT8", "int8_calibrator", "set_calibration_profile"} <= used.qualified | used.leaves
    for module in ("builder", "runner"):
        use = surface.used_names(surface.glue_sources()[module])
        assert not (use.qualified | use.leaves) & surface.REMOVED_IN_11, module
