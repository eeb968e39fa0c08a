"""constraints.txt (what `make install` installs) pins every dependency pyproject.toml declares, within its bounds."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def read_pins(text: str) -> dict[str, Version]:
    """Parse `name==version` lines (comments and blanks skipped); any other line is an error naming it."""
    pins: dict[str, Version] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)", line)
        if match is None:
            raise ValueError(f"constraints.txt line {number} is not an exact pin: {line!r}")
        pins[canonicalize_name(match.group(1))] = Version(match.group(2))
    return pins


def declared_requirements() -> list[Requirement]:
    """The dependencies and every optional extra of pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        texts.extend(extra)
    return [Requirement(text) for text in texts]


def unmet_requirements(requirements: list[Requirement], pins: dict[str, Version]) -> list[str]:
    """Each declared requirement that has no pin, or whose pin lies outside its specifier."""
    problems = []
    for requirement in requirements:
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None:
            problems.append(f"{requirement.name}: not pinned")
        elif not requirement.specifier.contains(pin, prereleases=True):
            problems.append(f"{requirement.name}: pinned {pin}, declared {requirement.specifier}")
    return problems


def test_every_declared_dependency_is_pinned_within_its_bounds() -> None:
    pins = read_pins((ROOT / "constraints.txt").read_text())
    assert unmet_requirements(declared_requirements(), pins) == []
    assert pins[canonicalize_name("torch")] == Version("2.13.0")  # the CPU build the Makefile installs


def test_the_check_catches_a_missing_or_out_of_bounds_pin() -> None:
    requirements = [Requirement("monai>=1.4"), Requirement("numpy>=1.24")]
    assert unmet_requirements(requirements, read_pins("monai==1.3.0\n")) == [
        "monai: pinned 1.3.0, declared >=1.4",
        "numpy: not pinned",
    ]
    with pytest.raises(ValueError, match="line 2 is not an exact pin"):
        read_pins("# header\nmonai>=1.4\n")


def test_make_install_installs_with_the_constraints() -> None:
    makefile = (ROOT / "Makefile").read_text()
    installs = [line for line in makefile.splitlines() if "pip install" in line and "upgrade pip" not in line]
    assert installs and all("-c constraints.txt" in line for line in installs)
