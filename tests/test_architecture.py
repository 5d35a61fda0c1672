"""The rooms map of pyproject.toml (import-linter, tests.support.rooms_contract): its rules on small cases."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from tests.support.rooms_contract import Room, import_allowed, parse_layers, room_of

LAYERS = ["top | side : partner", "app.edge | app2", "app", "base"]


def _room_name(module: str, rooms: dict[str, Room]) -> str | None:
    room = room_of(module, rooms)
    return None if room is None else room.name


def test_a_module_belongs_to_the_room_with_the_longest_matching_name():
    rooms = parse_layers(LAYERS)
    assert _room_name("app.edge.views", rooms) == "app.edge"
    assert _room_name("app.models", rooms) == "app"
    assert _room_name("app", rooms) == "app"
    assert room_of("application.models", rooms) is None  # a prefix of the name is not a package


@pytest.mark.parametrize(
    ("importer", "imported", "allowed"),
    [
        ("app.edge", "app", True),  # down
        ("app", "app.edge", False),  # up: the engine may not reach into its edge
        ("top", "base", True),  # down several layers
        ("base", "top", False),
        ("top", "side", False),  # independent rooms of one layer
        ("side", "partner", True),  # one group: may import each other
        ("partner", "side", True),
        ("app.edge", "app2", False),
    ],
)
def test_imports_go_down_and_siblings_stay_apart(importer, imported, allowed):
    rooms = parse_layers(LAYERS)
    assert import_allowed(rooms[importer], rooms[imported]) is allowed


def test_a_room_named_twice_is_refused():
    with pytest.raises(ValueError, match="twice"):
        parse_layers(["a | b", "a"])


def test_every_package_of_the_project_is_in_some_room_of_the_map():
    root = Path(__file__).resolve().parents[1]
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["importlinter"]
    rooms_contract = next(c for c in config["contracts"] if c["type"] == "rooms")
    rooms = parse_layers(rooms_contract["layers"])
    for package in config["root_packages"]:
        for path in (root / package).rglob("*.py"):
            module = ".".join(path.relative_to(root).with_suffix("").parts)
            assert isinstance(room_of(module, rooms), Room), module
    # Every room of the map names a package or module that exists (a renamed room cannot linger).
    for name in rooms:
        base = root.joinpath(*name.split("."))
        assert base.is_dir() or base.with_suffix(".py").exists(), name
