"""What a newcomer meets on the first run: readable build folders, progress lines with units,
intervals on the screen, help that explains itself, a doctor that says what is missing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from trtq.artifacts import staged_output


@pytest.mark.parametrize("umask,mode", [(0o022, 0o755), (0o027, 0o750), (0o077, 0o700)])
def test_the_build_folder_gets_the_mode_of_any_new_folder(umask, mode, tmp_path):
    old = os.umask(umask)
    try:
        with staged_output(tmp_path, "job") as stage:
            (stage / "f").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "job").stat().st_mode & 0o777 == mode


def test_progress_lines_have_units_and_the_summary_its_interval(tiny, run_cli):
    code, out, err = run_cli("build", tiny["job_path"])
    assert code == 0, err
    assert re.search(r"✓ calibrating: 24 samples in \d+\.\d s", err), err
    assert re.search(r"✓ evaluating accuracy: 24 samples in \d+\.\d s", err), err
    assert re.search(r"✓ measuring latency: 1 batch sizes in \d+\.\d s", err), err
    row = next(line for line in out.splitlines() if "top-1 (24 samples)" in line)
    assert re.search(r"\d+\.\d\d % \[\d+\.\d, \d+\.\d\]", row), row  # the 95 % interval, as in report.md


def test_the_compiling_note_knows_when_the_kernels_are_compiled(tmp_path):
    import numpy as np

    from trtq.calib import kernels
    from trtq.calib.stats import TensorStats

    code = "from trtq.calib import kernels; print(kernels.needs_compiling())"
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT), "NUMBA_CACHE_DIR": str(tmp_path)})
    assert fresh.stdout.strip() == "True"  # an empty numba cache: the first calibration compiles
    TensorStats(channel_axis=1).update(np.ones((1, 4, 2, 2), np.float32))  # compiled or loaded now
    assert kernels.needs_compiling() is False


def test_trtq_alone_prints_the_help(run_cli):
    code, out, _ = run_cli()
    assert code == 2
    assert out.startswith("usage: trtq") and "build" in out and "docs/job-reference.md" in out


@pytest.mark.parametrize("command", [["build"], ["eval"], ["bench"], ["inspect"], ["cache"], ["run"], ["doctor"]])
def test_every_command_explains_itself(command, run_cli, capsys):
    from trtq.cli import main

    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "examples:\n  trtq " + command[0] in text and "docs/job-reference.md" in text
    assert re.search(r"\n\n[A-Z].+\.\n", text), "no description"
    if command == ["bench"]:
        assert "(default: 10)" in text and "(default: 100)" in text and "(default: [1])" in text


def test_doctor_without_a_gpu_says_so():
    from trtq.engine.tensorrt import doctor

    if Path("/proc/driver/nvidia/version").exists():
        pytest.skip("this machine has an NVIDIA driver")
    facts = doctor()
    assert facts["gpu"] is None
    assert facts["gpu_error"].startswith("no NVIDIA driver or GPU found on this machine")
    assert facts["allows"] == ["target: onnxruntime (INT8 engine on this CPU)"]
