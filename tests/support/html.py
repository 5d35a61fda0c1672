"""Read rendered HTML the way a person (or a screen reader) meets it, so tests assert what is shown, not markup.

Built on the stdlib html.parser: `parse(html)` gives a small element tree; `find_all(html, "rect")`,
`find(html, "time")`, `visible_text(html)` (what a sighted person reads), `accessible_name(element)`,
`table_rows(table)` and `number(element, "width")` keep page and widget tests short.
Attribute filters: `class_="bar"` matches one class among several, `True` matches any value, a string matches exactly.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
# Text a sighted reader does not see on the page: tooltips (<title> in SVG), scripts, hidden elements.
UNSEEN_TAGS = {"script", "style", "template", "title", "head"}


@dataclass
class Element:
    """One parsed element: its tag, attributes, children (elements and strings) and parent."""

    tag: str
    attrs: dict[str, str]
    children: list[Element | str] = field(default_factory=list)
    parent: Element | None = field(default=None, repr=False)

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.attrs.get(name, default)

    @property
    def classes(self) -> list[str]:
        return (self.attrs.get("class") or "").split()

    def iter(self) -> Iterator[Element]:
        """This element and every element below it, in document order."""
        yield self
        for child in self.children:
            if isinstance(child, Element):
                yield from child.iter()

    def text(self) -> str:
        """All text inside, hidden or not, whitespace collapsed."""
        return _collapse("".join(_strings(self, visible_only=False)))

    def __str__(self) -> str:
        return f"<{self.tag} {self.attrs}>{self.text()[:80]}"


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.current = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {name: value or "" for name, value in attrs}, parent=self.current)
        self.current.children.append(element)
        if tag not in VOID:
            self.current = element

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.current.children.append(Element(tag, {name: value or "" for name, value in attrs}, parent=self.current))

    def handle_endtag(self, tag: str) -> None:
        node: Element | None = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:  # ignore stray end tags
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        self.current.children.append(data)


def parse(html: str | bytes | Element) -> Element:
    """The element tree of an HTML document or fragment (an Element is returned as is)."""
    if isinstance(html, Element):
        return html
    builder = _TreeBuilder()
    builder.feed(html.decode() if isinstance(html, bytes) else html)
    builder.close()
    return builder.root


def _matches(element: Element, attrs: dict[str, str | bool]) -> bool:
    for name, wanted in attrs.items():
        name = name.rstrip("_").replace("_", "-")
        if name == "class":
            if wanted not in element.classes:
                return False
        elif wanted is True:
            if name not in element.attrs:
                return False
        elif element.attrs.get(name) != wanted:
            return False
    return True


def find_all(html: str | bytes | Element, tag: str | None = None, **attrs: str | bool) -> list[Element]:
    """Elements with that tag (any tag for None) and attributes, in document order. `aria_label=` means aria-label."""
    return [
        element
        for element in parse(html).iter()
        if element.tag != "#document" and (tag is None or element.tag == tag) and _matches(element, attrs)
    ]


def find(html: str | bytes | Element, tag: str | None = None, **attrs: str | bool) -> Element:
    """The one element that matches (fails the test when there is none or more than one)."""
    found = find_all(html, tag, **attrs)
    assert len(found) == 1, f"expected one <{tag} {attrs}>, found {len(found)}"
    return found[0]


def _hidden(element: Element) -> bool:
    return (
        element.tag in UNSEEN_TAGS
        or "visually-hidden" in element.classes
        or "hidden" in element.attrs
        or (element.tag == "input" and element.attrs.get("type") == "hidden")
    )


def _strings(element: Element, *, visible_only: bool) -> Iterator[str]:
    for child in element.children:
        if isinstance(child, str):
            yield child
        elif not (visible_only and _hidden(child)):
            yield " " if child.tag in VOID else ""
            yield from _strings(child, visible_only=visible_only)
            yield " " if child.tag not in {"span", "strong", "em", "a", "code", "time", "b", "i"} else ""


def _collapse(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def visible_text(html: str | bytes | Element) -> str:
    """The text a sighted person reads, whitespace collapsed: without tooltips, scripts and visually hidden parts."""
    root = parse(html)
    if _hidden(root):
        return ""
    return _collapse("".join(_strings(root, visible_only=True)))


def accessible_name(element: Element) -> str:
    """What assistive technology announces for an element: aria-label, else its <title> (SVG), else its text."""
    if element.get("aria-label"):
        return element.get("aria-label") or ""
    titles = [child for child in element.children if isinstance(child, Element) and child.tag == "title"]
    if titles:
        return titles[0].text()
    return element.text()


def table_rows(table: Element, section: str = "tbody") -> list[list[str]]:
    """The text of each cell, row by row, of a table's body (or "thead")."""
    return [
        [cell.text() for cell in row.children if isinstance(cell, Element)]
        for row in find_all(find(table, section), "tr")
    ]


def number(element: Element, attribute: str) -> float:
    """A numeric attribute (an SVG coordinate or size) as a float."""
    value = element.get(attribute)
    assert value is not None, f"{element} has no {attribute}"
    return float(value)


def badges(html: str | bytes | Element) -> list[tuple[str, str]]:
    """The status badges shown, in page order: (label, the status its colour class names, e.g. "rolled_back")."""
    return [
        (badge.text(), next(css[len("badge-") :] for css in badge.classes if css.startswith("badge-")))
        for badge in find_all(html, "span", class_="badge")
    ]


def row_cells(html: str | bytes | Element, header: str) -> list[str]:
    """The cells of the table row whose header cell reads `header` (the first such row)."""
    for row in find_all(html, "tr"):
        cells = [cell for cell in row.children if isinstance(cell, Element)]
        if cells and cells[0].tag == "th" and cells[0].text() == header:
            return [cell.text() for cell in cells[1:]]
    raise AssertionError(f"no table row headed {header!r}")


def table_captioned(html: str | bytes | Element, caption: str) -> Element:
    """The one table whose caption reads `caption` (captions are what screen readers announce for a table)."""
    tables = [table for table in find_all(html, "table") if [c.text() for c in find_all(table, "caption")] == [caption]]
    assert len(tables) == 1, f"expected one table captioned {caption!r}, found {len(tables)}"
    return tables[0]
