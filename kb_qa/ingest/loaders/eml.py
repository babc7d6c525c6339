"""E-mail (.eml): headers plus the plain-text body, else the HTML body; attachments are left out."""

from __future__ import annotations

from kb_qa.ingest.encoding import decode_text, normalize_encoding
from kb_qa.ingest.loaders.base import LoadError
from kb_qa.ingest.loaders.html import html_sections
from kb_qa.schema import Section


def load_eml(data: bytes, name: str) -> list[Section]:
    import email
    from email import policy

    message = email.message_from_bytes(data, policy=policy.default)
    headers = _eml_headers(data, name)
    subject = headers.get("Subject", "")
    header_lines = [f"{h}: {value}" for h, value in headers.items() if value]
    body_part = message.get_body(preferencelist=("plain", "html"))
    if body_part is None and not message.is_multipart() and message.get_content_maintype() == "text":
        body_part = message
    body = ""
    if body_part is not None:
        payload = body_part.get_payload(decode=True)
        payload = payload if isinstance(payload, bytes) else b""  # decode=True gives bytes for a leaf part
        body = _decode_declared(payload, body_part.get_content_charset(), name)
        if body_part.get_content_subtype() == "html":
            body = "\n\n".join(s.text for s in html_sections(body, name))
    if not header_lines and not body.strip():
        raise LoadError(name, "not an e-mail message (no headers, no text body)")
    return [Section("\n".join(header_lines) + "\n\n" + body, heading=subject or None)]


def _eml_headers(data: bytes, name: str) -> dict[str, str]:
    """Subject/From/To/Cc/Date as text: RFC 2047 encoded words decoded with their charset, raw 8-bit header
    bytes (e.g. GBK straight in the header, common from older Chinese mail clients) detected like a text file.
    (The modern email policy turns such bytes into U+FFFD, so headers are read with the compat32 parser.)"""
    from email import policy
    from email.header import decode_header
    from email.parser import BytesHeaderParser

    parsed = BytesHeaderParser(policy=policy.compat32).parsebytes(data)
    raw_items = {key.lower(): value for key, value in reversed(list(parsed.raw_items()))}  # first one wins
    out: dict[str, str] = {}
    for header in ("Subject", "From", "To", "Cc", "Date"):
        raw = raw_items.get(header.lower())
        if raw is None:
            continue
        raw = str(raw)
        if any("\udc80" <= ch <= "\udcff" for ch in raw):  # undecoded 8-bit bytes (surrogate escapes)
            text = decode_text(raw.encode("ascii", "surrogateescape"), name)
        else:
            parts = []
            for chunk, charset in decode_header(raw):
                if isinstance(chunk, str):
                    parts.append(chunk)
                else:
                    parts.append(_decode_declared(chunk, charset, name))
            text = "".join(parts)
        out[header] = " ".join(text.split())
    return out


def _decode_declared(payload: bytes, charset: str | None, name: str) -> str:
    encoding = normalize_encoding(charset) if charset else None
    if encoding is not None:
        try:
            return payload.decode(encoding).replace("\r\n", "\n")
        except UnicodeDecodeError:
            pass  # a wrong declaration: detect instead
    return decode_text(payload, name)
