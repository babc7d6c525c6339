"""EPUB: the spine's chapters in order, each read the HTML way; DRM-encrypted chapters are refused."""

from __future__ import annotations

import io
import logging
import zipfile
from pathlib import PurePosixPath

from kb_qa.ingest.encoding import decode_text
from kb_qa.ingest.loaders.base import LoadError, safe_xml_parser
from kb_qa.ingest.loaders.html import html_sections
from kb_qa.schema import Section

log = logging.getLogger(__name__)


def load_epub(data: bytes, name: str) -> list[Section]:
    from lxml import etree

    parser = safe_xml_parser()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        container = etree.fromstring(archive.read("META-INF/container.xml"), parser=parser)
        rootfile = container.find(".//{*}rootfile")
        if rootfile is None or not rootfile.get("full-path"):
            raise LoadError(name, "corrupt EPUB: META-INF/container.xml names no package document")
        opf_path = PurePosixPath(rootfile.get("full-path"))
        opf = etree.fromstring(archive.read(str(opf_path)), parser=parser)
        manifest = {item.get("id"): item for item in opf.iter("{*}item")}
        encrypted = set()
        if "META-INF/encryption.xml" in archive.namelist():
            enc = etree.fromstring(archive.read("META-INF/encryption.xml"), parser=parser)
            encrypted = {ref.get("URI") for ref in enc.iter("{*}CipherReference")}
        sections: list[Section] = []
        for itemref in opf.iter("{*}itemref"):
            item = manifest.get(itemref.get("idref"))
            if item is None or "html" not in (item.get("media-type") or ""):
                continue
            href = _join_zip_path(opf_path.parent, item.get("href", ""))
            if href in encrypted:
                raise LoadError(name, "encrypted EPUB (DRM): its chapters cannot be read")
            try:
                chapter = archive.read(href)
            except KeyError:
                log.warning("%s: chapter %s listed but missing", name, href)
                continue
            sections.extend(html_sections(decode_text(chapter, href), name))
    return sections


def _join_zip_path(base: PurePosixPath, href: str) -> str:
    from urllib.parse import unquote

    parts: list[str] = []
    for part in (base / unquote(href.split("#")[0])).parts:
        if part == "..":
            if parts:
                parts.pop()
        elif part not in (".", ""):
            parts.append(part)
    return "/".join(parts)
