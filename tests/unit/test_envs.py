"""The conda envs (envs/*.yaml) and requirements.txt pin the same versions."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ENV_FILES = sorted((REPO / "envs").glob("*.yaml"))
NOT_PIP_PACKAGES = {"python", "pip"}  # conda-only entries with no counterpart in requirements.txt


def normalise(name: str) -> str:
    """PEP 503 name: 'Scikit_Image' and 'scikit-image' are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"requirements.txt: '{line}' is not an exact pin (name==version)"
            pins[normalise(name.split("[")[0])] = version.strip()
    return pins


def env_pins(env_file: Path) -> dict[str, str]:
    """Every pinned package of an env: pip entries `name==version`, conda entries `name =version`."""
    env = yaml.safe_load(env_file.read_text())
    pins = {}
    for entry in env.get("dependencies", []):
        specs = entry.get("pip", []) if isinstance(entry, dict) else [entry]
        for spec in specs:
            match = re.fullmatch(r"\s*([A-Za-z0-9_.\-\[\]]+)\s*(==|=)?\s*([^\s#]*)\s*", str(spec))
            assert match, f"{env_file.name}: cannot parse dependency '{spec}'"
            name, _, version = match.groups()
            if normalise(name) not in NOT_PIP_PACKAGES:
                pins[normalise(name.split("[")[0])] = version
    return pins


def test_there_are_envs():
    assert ENV_FILES, "no envs/*.yaml found"


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.name)
def test_env_pins_agree_with_requirements(env_file):
    requirements = requirement_pins()
    for name, version in env_pins(env_file).items():
        assert version, f"{env_file.name}: '{name}' is not pinned; pin it as in requirements.txt"
        assert name in requirements, (
            f"{env_file.name} pins {name}=={version}, but requirements.txt does not pin {name}"
        )
        assert version == requirements[name], (
            f"{env_file.name} pins {name}=={version} but requirements.txt has {name}=={requirements[name]}; "
            "make them agree"
        )


def test_parsing_of_pins():
    assert normalise("Scikit_Image") == "scikit-image"
    assert requirement_pins()["numpy"]
