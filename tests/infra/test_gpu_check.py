"""The GPU check kit (tools/gpu_check.sh) on a CPU machine: its arguments and errors, the download command it would
run, the offline wheel install, and a full run that skips every GPU check with its reason instead of failing."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KIT = REPO / "tools" / "gpu_check.sh"


def kit(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                              "MASTER_PORT")}
    return subprocess.run(["bash", str(KIT), *args], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=REPO)


def test_usage_and_argument_errors(tmp_path):
    help_ = kit("--help")
    assert help_.returncode == 0
    for word in ("download", "run", "policy", "vllm", "throughput", "packing", "8 minutes"):
        assert word in help_.stdout
    assert kit().returncode == 2
    bad = kit("frobnicate")
    assert bad.returncode == 2 and "unknown command 'frobnicate'" in bad.stderr
    assert "unknown option '--gpus'" in kit("run", "--gpus", "8").stderr
    assert "--budget needs a number of seconds, got 'soon'" in kit("run", "--budget", "soon").stderr
    missing = kit("run", "--wheels", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"))
    assert missing.returncode == 2 and "nowhere' is not a directory" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = kit("run", "--wheels", str(tmp_path / "empty"), "--out", str(tmp_path / "o"))
    assert empty.returncode == 2 and "no .whl files" in empty.stderr
    assert "is not an executable" in kit("run", "--python", "/no/such/python").stderr


def test_download_command_targets_the_gpu_platform_at_the_pinned_versions():
    out = kit("download", "--print")
    assert out.returncode == 0, out.stderr
    download, build = out.stdout.strip().splitlines()
    for flag in ("--only-binary=:all:", "--python-version 3.12", "--abi cp312", "--platform manylinux_2_28_x86_64",
                 "--no-deps"):
        assert flag in download
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    for name in ("megatron-core", "omegaconf", "math-verify", "latex2sympy2_extended"):
        assert f"{name}=={pins[name]}" in download
    # Source-only pure-Python pins are built into universal wheels.
    assert "pip wheel --no-deps" in build and f"antlr4-python3-runtime=={pins['antlr4-python3-runtime']}" in build


def test_cpu_run_skips_gpu_checks_with_reasons(tmp_path):
    out = tmp_path / "report"
    run = kit("run", "--no-install", "--python", sys.executable, "--out", str(out))
    assert run.returncode == 0, run.stdout + run.stderr
    report = (out / "report.md").read_text()
    assert "| imports | PASS |" in report
    for check in ("policy", "vllm", "throughput", "packing"):
        assert f"| {check} | SKIPPED | 0 s | no CUDA GPU on this machine |" in report, report
    assert "transformer engine | INFO" in report and "block-diagonal mask" in report
    env = (out / "environment.txt").read_text()
    assert "cuda available: False" in env and "megatron-core:" in env


def _wheel(directory: Path, name: str) -> Path:
    """A minimal valid wheel of an importable package ``name``."""
    path = directory / f"{name}-0.1-py3-none-any.whl"
    dist = f"{name}-0.1.dist-info"
    files = {f"{name}/__init__.py": "VALUE = 1\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{dist}/RECORD"] = "".join(f"{f},,\n" for f in files) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for f, text in files.items():
            z.writestr(f, text)
    return path


def test_offline_install_then_missing_imports_fail_clearly(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "kitprobe")
    out = tmp_path / "report"
    # The base interpreter of this venv has none of the dependencies: the install works offline, the import check
    # then names what is missing and the run fails without starting any check.
    base = getattr(sys, "_base_executable", sys.executable)
    run = kit("run", "--wheels", str(wheels), "--python", base, "--out", str(out))
    report = (out / "report.md").read_text()
    assert "| install | PASS |" in report and "1 wheels from" in report, report
    assert run.returncode == 1 and "| imports | FAIL | 0 s | not importable: megatron.core" in report, report
    check = subprocess.run([base, "-c", "import kitprobe; print(kitprobe.VALUE)"], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(out / "site")})
    assert check.stdout.strip() == "1"
