"""The vehicle agent ships without the server: every import is the stdlib, the agent itself, or its own list."""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

AGENT = Path(__file__).resolve().parents[2] / "devices" / "agent"
PROJECT = AGENT.parents[1] / "pyproject.toml"


def _requirements() -> dict[str, str]:
    pins = {}
    for line in (AGENT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    return pins


def _imported_top_levels(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_agent_imports_only_the_stdlib_itself_and_its_listed_dependencies():
    allowed_third_party = set(_requirements())
    offending: dict[str, list[str]] = {}
    for path in sorted(AGENT.rglob("*.py")):
        for name in _imported_top_levels(path):
            top = name.split(".")[0]
            if name == "devices.agent" or name.startswith("devices.agent."):
                continue
            if top in sys.stdlib_module_names or top == "__future__" or top in allowed_third_party:
                continue
            offending.setdefault(path.name, []).append(name)
    assert offending == {}


def test_agent_pins_match_the_server_pins():
    """One version of each shared dependency: the agent's list agrees with the project's."""
    project = tomllib.loads(PROJECT.read_text())["project"]["dependencies"]
    server_pins = dict(entry.split("==") for entry in project if "==" in entry)
    server_pins = {name.split("[")[0].lower(): version for name, version in server_pins.items()}
    for name, version in _requirements().items():
        assert server_pins.get(name) == version, name
