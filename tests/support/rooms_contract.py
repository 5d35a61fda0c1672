"""An import-linter contract for rooms nested inside apps: `type = "rooms"` in pyproject.toml.

import-linter's own `layers` contract cannot express this project's map, because its rooms nest: the device edge
(`devices.edge`) sits above the rollout engine while the inventory (`devices`) sits below it, and the low part of
the audit room (`approvals.audit`) sits below the inventory while its pages (`approvals.audit.web`) sit on top.
Here every first-party module belongs to the room with the longest matching name (so `devices.edge.views` is in
`devices.edge`, `devices.models` in `devices`), and every direct import must stay in its room or go down.

`layers` lists the layers from the highest to the lowest. A layer is one or more groups separated by `|`:
groups of one layer are independent (neither may import the other). A group is one or more rooms separated by
`:` that may import each other freely. Checking direct imports is enough: if every edge goes down, no chain of
imports can come back up. Every module of the root packages must fall in some room (no escape by a new folder).
"""

from __future__ import annotations

from dataclasses import dataclass

from grimp import ImportGraph
from importlinter.application import output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck


@dataclass(frozen=True)
class Room:
    """A room's place on the map: its layer (0 is the highest) and its group within that layer."""

    name: str
    layer: int
    group: int


def parse_layers(layers: list[str]) -> dict[str, Room]:
    """The rooms of `layers` (highest first), each with its layer and group index."""
    rooms: dict[str, Room] = {}
    for layer_index, layer in enumerate(layers):
        for group_index, group in enumerate(layer.split("|")):
            for name in (part.strip() for part in group.split(":")):
                if not name:
                    raise ValueError(f"empty room name in layer {layer!r}")
                if name in rooms:
                    raise ValueError(f"room {name!r} appears twice")
                rooms[name] = Room(name, layer_index, group_index)
    return rooms


def room_of(module: str, rooms: dict[str, Room]) -> Room | None:
    """The room with the longest name that is the module or one of its packages."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        room = rooms.get(".".join(parts[:end]))
        if room is not None:
            return room
    return None


def import_allowed(importer: Room, imported: Room) -> bool:
    """Down the layers always; within a layer only inside one group; never up."""
    if importer.layer != imported.layer:
        return importer.layer < imported.layer
    return importer.group == imported.group


class RoomsContract(Contract):
    """Direct imports between first-party rooms go down the layers; siblings in a layer stay independent."""

    type_name = "rooms"

    layers = fields.ListField(subfield=fields.StringField())

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        rooms = parse_layers([str(layer) for layer in self.layers])  # type: ignore[attr-defined]  # set by _populate_fields
        roots = {root.split(".")[0] for root in self.session_options["root_packages"]}
        first_party = sorted(m for m in graph.modules if m.split(".")[0] in roots)
        homeless = [m for m in first_party if room_of(m, rooms) is None]
        violations: list[tuple[str, str, str, str, list[int]]] = []
        for importer in first_party:
            importer_room = room_of(importer, rooms)
            if importer_room is None:
                continue
            for imported in sorted(graph.find_modules_directly_imported_by(importer)):
                imported_room = room_of(imported, rooms)
                if imported_room is None or imported_room == importer_room:
                    continue
                if not import_allowed(importer_room, imported_room):
                    details = graph.get_import_details(importer=importer, imported=imported)
                    lines = sorted({detail["line_number"] for detail in details})
                    violations.append((importer, imported, importer_room.name, imported_room.name, lines))
        return ContractCheck(
            kept=not violations and not homeless,
            metadata={"violations": violations, "homeless": homeless},
        )

    def render_broken_contract(self, check: ContractCheck) -> None:
        for module in check.metadata["homeless"]:
            output.print_error(f"{module} is in no room: add its package to a layer of the map.", bold=False)
            output.new_line()
        for importer, imported, importer_room, imported_room, lines in check.metadata["violations"]:
            where = ", ".join(f"l.{line}" for line in lines)
            output.print_error(f"{importer} -> {imported} ({where})", bold=True)
            output.print_error(f"    room {importer_room} may not import room {imported_room}", bold=False)
            output.new_line()
