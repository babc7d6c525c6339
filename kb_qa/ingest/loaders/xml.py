"""XML: 'element: text' lines; XHTML goes the HTML way; entities and DTDs are never loaded."""

from __future__ import annotations

import re

from kb_qa.ingest.encoding import decode_text
from kb_qa.ingest.loaders.base import LoadError, safe_xml_parser
from kb_qa.ingest.loaders.html import html_sections
from kb_qa.schema import Section


def load_xml(data: bytes, name: str) -> list[Section]:
    from lxml import etree

    text = decode_text(data, name)
    parser = safe_xml_parser()
    try:
        root = etree.fromstring(_strip_xml_declaration(text).encode("utf-8"), parser=parser)
    except etree.XMLSyntaxError as exc:
        raise LoadError(name, f"malformed XML: {exc}") from exc
    if root is None:
        raise LoadError(name, "empty document (no XML elements)")
    if etree.QName(root).localname.lower() == "html":
        return html_sections(text, name)
    lines: list[str] = []
    _xml_lines(root, lines)
    return [Section("\n".join(lines))]


def _strip_xml_declaration(text: str) -> str:
    return re.sub(r"^\s*<\?xml[^>]*\?>", "", text, count=1)


_LOOKS_HTML = re.compile(r"<[a-zA-Z][a-zA-Z0-9]*(?:\s[^<>]*)?/?>|</[a-zA-Z][a-zA-Z0-9]*>")


def _xml_lines(element, lines: list[str]) -> None:
    """Leaf elements as 'name: text'; mixed content (text with inline elements) as one line of its text;
    containers recurse."""
    from lxml import etree

    if not isinstance(element.tag, str):  # comments, PIs, entities
        return
    name = etree.QName(element).localname
    children = [c for c in element if isinstance(c.tag, str)]
    own = (element.text or "").strip()
    mixed = bool(children) and (own or any((c.tail or "").strip() for c in children))
    if not children or mixed:
        text = " ".join("".join(element.itertext()).split()) if mixed else own
        if _LOOKS_HTML.search(text):  # escaped HTML inside a feed's <description>
            text = "\n".join(s.text for s in html_sections(text))
        if text:
            lines.append(f"{name}: {text}")
        return
    for child in children:
        _xml_lines(child, lines)
