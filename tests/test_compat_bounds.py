"""pyproject.toml's lower bounds are what scripts/compat.sh tests: every `>=` bound of a
dependency (core and extras) equals the pin in scripts/compat/oldest.txt, and every core
dependency is pinned there, so a bound cannot be raised or lowered without the tested set."""

from __future__ import annotations

import re
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parents[1]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements() -> tuple[list[str], list[str]]:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    if tomllib is not None:
        data = tomllib.loads(text)["project"]
        core = list(data["dependencies"])
        extras = [r for reqs in data["optional-dependencies"].values() for r in reqs]
        return core, extras
    core_block = re.search(r"^dependencies = \[(.*?)^\]", text, re.DOTALL | re.MULTILINE)
    assert core_block
    core = re.findall(r'"([^"]+)"', core_block.group(1))
    extras_block = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return core, re.findall(r'"([^"]+)"', extras_block)


def lower_bounds(reqs: list[str]) -> dict[str, str]:
    out = {}
    for r in reqs:
        m = re.match(r"\s*([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*>=\s*([0-9][^,;\s]*)", r)
        if m:
            out[norm(m.group(1))] = m.group(2)
    return out


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "scripts" / "compat" / "oldest.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"oldest.txt: {line!r} is not an exact pin"
            out[norm(name)] = version
    return out


def test_lower_bounds_are_the_tested_versions() -> None:
    core, extras = requirements()
    tested = pins()
    bounds = lower_bounds(core + extras)
    wrong = {k: (v, tested.get(k)) for k, v in bounds.items() if k in tested and tested[k] != v}
    assert not wrong, f"pyproject bound != scripts/compat/oldest.txt pin: {wrong}"
    untested = sorted(set(lower_bounds(core)) - set(tested))
    assert not untested, f"core dependencies without a tested oldest version: {untested}"


def test_the_check_can_fail() -> None:
    assert lower_bounds(['torch>=2.6', 'x[y]>=1.0 ; python_version>"3"', "z==1"]) == \
        {"torch": "2.6", "x": "1.0"}
