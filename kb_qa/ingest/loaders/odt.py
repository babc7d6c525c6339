"""ODT: paragraphs, headings (text:h), lists and tables from content.xml; notes and annotations left out."""

from __future__ import annotations

import io
import zipfile

from kb_qa.ingest.limits import check_columns, current_options
from kb_qa.ingest.loaders.base import LoadError, SectionBuilder, safe_xml_parser
from kb_qa.schema import Section

_ODF = {
    "text": "urn:oasis:names:tc:opendocument:xmlns:text:1.0",
    "table": "urn:oasis:names:tc:opendocument:xmlns:table:1.0",
    "office": "urn:oasis:names:tc:opendocument:xmlns:office:1.0",
    "draw": "urn:oasis:names:tc:opendocument:xmlns:drawing:1.0",
}


def _odf(tag: str) -> str:
    prefix, local = tag.split(":")
    return f"{{{_ODF[prefix]}}}{local}"


def load_odt(data: bytes, name: str) -> list[Section]:
    from lxml import etree

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        mimetype = archive.read("mimetype").decode("ascii", "replace").strip() if "mimetype" in \
            archive.namelist() else ""
        if mimetype and mimetype != "application/vnd.oasis.opendocument.text":
            raise LoadError(name, f"not an ODF text document (its type is {mimetype})")
        if "META-INF/encryption.xml" in archive.namelist() or _odf_encrypted(archive):
            raise LoadError(name, "encrypted ODT: a password is needed")
        content = archive.read("content.xml")
    root = etree.fromstring(content, parser=safe_xml_parser())
    body = root.find(f"{_odf('office:body')}/{_odf('office:text')}")
    builder = SectionBuilder()
    if body is not None:
        _odt_walk(body, builder, name)
    return builder.sections()


def _odf_encrypted(archive: zipfile.ZipFile) -> bool:
    try:
        manifest = archive.read("META-INF/manifest.xml")
    except KeyError:
        return False
    return b"encryption-data" in manifest


def _odt_walk(parent, builder: SectionBuilder, name: str = "document") -> None:
    for child in parent:
        tag = child.tag
        if tag == _odf("text:h"):
            text = _odt_inline(child).strip()
            if text:
                builder.heading(text)
        elif tag == _odf("text:p"):
            builder.line(_odt_inline(child))
        elif tag == _odf("text:list"):
            for item in child.iter(_odf("text:list-item")):
                texts = [_odt_inline(p).strip() for p in item if p.tag in (_odf("text:p"), _odf("text:h"))]
                texts = [t for t in texts if t]
                if texts:
                    builder.line("- " + " ".join(texts))
        elif tag == _odf("table:table"):
            lines = []
            for number, row in enumerate(child.iter(_odf("table:table-row")), 1):
                cells = [" ".join(_odt_inline(p).strip() for p in cell.iter(_odf("text:p"), _odf("text:h")))
                         for cell in row if cell.tag == _odf("table:table-cell")]
                # (cells as written: table:number-columns-repeated is not expanded here, so it costs nothing)
                check_columns(cells, number, name, current_options.get().limits, "a table, ")
                cells = [c.strip() for c in cells if c.strip()]
                if cells:
                    lines.append(" | ".join(cells))
            builder.block(lines)
        elif tag in (_odf("text:section"), _odf("text:index-body"), _odf("text:table-of-content")):
            _odt_walk(child, builder, name)


def _odt_inline(element) -> str:
    parts = [element.text or ""]
    for child in element:
        tag = child.tag
        if tag == _odf("text:s"):
            parts.append(" " * min(int(child.get(_odf("text:c"), "1")), 64))  # collapsed later anyway
        elif tag == _odf("text:tab"):
            parts.append("\t")
        elif tag == _odf("text:line-break"):
            parts.append("\n")
        elif tag in (_odf("text:note"), _odf("office:annotation"), _odf("text:tracked-changes")):
            pass
        else:
            parts.append(_odt_inline(child))
        parts.append(child.tail or "")
    return "".join(parts)
