"""Traversal matrix: every name-carrying parameter of the API x hostile names (`..`, `..\\`, absolute, URL-encoded
and double-encoded traversal, NUL, over-long, symlinks planted in the data folders). After the whole matrix the
file system is walked: nothing outside the data roots was created, changed or deleted, nothing was written
through a planted symlink, and no response leaked the content of a file outside the roots."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
from fastapi.testclient import TestClient

from kb_qa.api import create_app
from kb_qa.naming import validate_kb_name

SECRET = "TOP-SECRET-OUTSIDE-THE-ROOTS"


def tree(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, tuple]:
    """path -> (kind, size, mtime_ns, sha256 / link target) for everything under root, not following links."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        if any(here == s or s in here.parents for s in skip):
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            p = here / name
            st = p.lstat()
            if p.is_symlink():
                out[str(p)] = ("link", os.readlink(p))
            elif p.is_dir():
                out[str(p)] = ("dir", st.st_mode)
            else:
                out[str(p)] = ("file", st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def hostile_names(tmp: Path, marker: str) -> list[str]:
    """Names meant to escape. `marker` makes absolute targets unique, so their absence can be checked."""
    absolute = str(tmp / "outside" / f"{marker}.txt")
    return [
        "..", ".", "../", "../outside", "../outside/secret.txt", "../../outside/secret.txt",
        "..\\outside\\secret.txt", "..\\..\\secret.txt", "sub/../../outside/secret.txt",
        absolute, "/etc/passwd", f"/tmp/{marker}.txt", "C:\\Windows\\win.ini", "\\\\server\\share\\x.txt",
        "%2e%2e%2foutside%2fsecret.txt", "%2e%2e/outside/secret.txt", "..%2foutside%2fsecret.txt",
        "%252e%252e%252foutside%252fsecret.txt", "..%252f..%252fsecret.txt", "%c0%ae%c0%ae/secret.txt",
        "..%5coutside%5csecret.txt", "a\x00.txt", "%00.txt", "secret.txt\x00.md",
        "x" * 300 + ".txt", "y" * 5000, "ｘ" * 200 + ".txt",
        "link.txt", "linkdir/secret.txt", "linkdir", "evil", "evil_store", "…/secret.txt", " ", "\t..",
    ]


@pytest.fixture
def sandbox(tmp_path, app):
    """Data roots inside tmp_path, an 'outside' folder with a secret, a real KB 'kb', and planted symlinks:
    knowledge_base/kb/link.txt -> outside/secret.txt, knowledge_base/kb/linkdir -> outside/,
    knowledge_base/evil -> outside/ (a KB folder that is a link), vector_store/evil_store -> outside/."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET)
    (tmp_path / "secret.txt").write_text(SECRET)
    client = TestClient(create_app(app, preload=False, lock_timeout_s=0.2), raise_server_exceptions=False)
    r = client.post("/knowledge_bases/kb/documents", files=[("files", ("real.txt", b"Real content about apples."))])
    assert r.status_code == 200
    docs, store = app.docs_root, app.store_root
    (docs / "kb" / "link.txt").symlink_to(outside / "secret.txt")
    (docs / "kb" / "linkdir").symlink_to(outside, target_is_directory=True)
    (docs / "evil").symlink_to(outside, target_is_directory=True)
    (store / "evil_store").symlink_to(outside, target_is_directory=True)
    (store / "evil").symlink_to(outside, target_is_directory=True)
    return client, tmp_path, docs, store


def requests_for(name: str, kb_ok: str = "kb"):
    """(description, method, url, kwargs) for every parameter that carries `name` toward the file system."""
    enc = quote(name, safe="").replace(".", "%2E")  # dots too, or the client drops '..' segments itself
    yield "kb path: show", "GET", f"/knowledge_bases/{enc}", {}
    yield "kb path: delete", "DELETE", f"/knowledge_bases/{enc}?delete_documents=true", {}
    yield "kb path: documents", "GET", f"/knowledge_bases/{enc}/documents", {}
    yield "kb path: upload", "POST", f"/knowledge_bases/{enc}/documents", {"files": [("files", ("u.txt", b"pwn"))]}
    yield "kb path: remove", "DELETE", f"/knowledge_bases/{enc}/documents/real.txt", {}
    yield "kb path: search", "POST", f"/knowledge_bases/{enc}/search", {"json": {"query": "apples"}}
    yield "kb raw path", "GET", RawPath(f"/knowledge_bases/{name}/documents"), {}
    yield "kb raw path: delete", "DELETE", RawPath(f"/knowledge_bases/{name}"), {}
    yield "kb body: create", "POST", "/knowledge_bases", {"json": {"name": name}}
    yield "kb body: chatglm", "POST", "/", {"json": {"prompt": "apples", "knowledge_base": name}}
    yield "kb body: openai model", "POST", "/v1/chat/completions", {
        "json": {"model": f"kb:{name}", "messages": [{"role": "user", "content": "apples"}]}}
    yield "kb body: openai field", "POST", "/v1/chat/completions", {
        "json": {"model": "x", "knowledge_base": name, "stream": True,
                 "messages": [{"role": "user", "content": "apples"}]}}
    yield "file name: upload", "POST", f"/knowledge_bases/{kb_ok}/documents", {
        "files": [("files", (name, b"pwned " + name.encode("utf-8", "surrogatepass")))]}
    yield "file name: upload .txt", "POST", f"/knowledge_bases/{kb_ok}/documents", {
        "files": [("files", (name + ".txt", b"pwned"))]}
    yield "doc path: remove", "DELETE", f"/knowledge_bases/{kb_ok}/documents/{enc}", {}
    yield "doc path: remove (raw)", "DELETE", RawPath(f"/knowledge_bases/{kb_ok}/documents/{name}"), {}
    yield "doc path: remove (slashes kept)", "DELETE", RawPath(f"/knowledge_bases/{kb_ok}/documents/"
                                                               f"{quote(name, safe='/')}"), {}


class RawPath(str):
    """A request path sent exactly as written: HTTP clients (httpx, browsers, curl) remove '.' and '..' segments
    before sending, which would test the client, not the server."""


class RawResponse:
    def __init__(self, status_code: int, headers: dict[str, str], body: bytes):
        self.status_code, self.headers, self.text = status_code, headers, body.decode("utf-8", "replace")


def send_raw(api, method: str, path: str) -> RawResponse:
    """One request straight into the ASGI app with `path` as the raw request target (no normalisation), decoded
    the way uvicorn decodes it (percent-decoding into scope['path'])."""
    import anyio

    raw = path.encode("utf-8", "surrogatepass")
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": unquote(path), "raw_path": raw, "query_string": b"",
             "root_path": "", "headers": [(b"host", b"testserver")], "client": ("127.0.0.1", 1),
             "server": ("testserver", 80)}
    out = {"status": 0, "headers": {}, "body": b""}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
            out["headers"] = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    anyio.run(api, scope, receive, send)
    return RawResponse(out["status"], out["headers"], out["body"])


def test_traversal_matrix_touches_nothing_outside_the_roots(sandbox):
    client, tmp, docs, store = sandbox
    marker = f"kbqa-pwned-{uuid.uuid4().hex}"
    outside_before = tree(tmp, skip=(docs, store))
    links_before = {p: t for p, t in tree(tmp).items() if t[0] == "link"}
    codes: dict[int, int] = {}
    for name in hostile_names(tmp, marker):
        for what, method, url, kwargs in requests_for(name):
            try:
                if isinstance(url, RawPath):
                    r = send_raw(client.app, method, url)
                else:
                    r = client.request(method, url, **kwargs)
            except Exception as exc:  # noqa: BLE001 - the client itself refusing to send a name (e.g. invalid URL) is fine
                assert "\x00" in name or "URL" in type(exc).__name__ or isinstance(exc, ValueError), (what, exc)
                continue
            codes[r.status_code] = codes.get(r.status_code, 0) + 1
            assert r.status_code < 500, (what, repr(name), r.status_code, r.text)
            assert SECRET not in r.text, (what, repr(name))
            kind = r.headers.get("content-type", "")
            assert kind.startswith(("application/json", "text/event-stream")), (what, name, r.status_code)
    # outside the roots: byte for byte as before; the planted links still point where they did
    assert tree(tmp, skip=(docs, store)) == outside_before
    assert (tmp / "outside" / "secret.txt").read_text() == SECRET
    assert {p: t for p, t in tree(tmp).items() if t[0] == "link"} == links_before
    assert not Path(f"/tmp/{marker}.txt").exists()
    assert not any(marker in p.name for p in Path("/tmp").iterdir())
    # inside the roots: the planted links, and real folders with valid KB names directly under each root
    for root in (docs, store):
        for p in root.iterdir():
            if str(p) in links_before:
                continue
            assert p.is_dir() and not p.is_symlink(), p
            validate_kb_name(p.name) if not p.name.endswith(".deleting") else None
    # inside knowledge_base/kb: regular files directly in the folder, besides the planted links
    for p in (docs / "kb").iterdir():
        assert str(p) in links_before or (p.is_file() and not p.is_symlink()), p
    # the real knowledge base survived every attempt
    assert client.get("/knowledge_bases/kb").status_code == 200
    assert "real.txt" in {d["source"] for d in client.get("/knowledge_bases/kb/documents").json()}
    print("traversal matrix status codes:", dict(sorted(codes.items())))
    assert codes.get(200, 0) > 0 and sum(codes.values()) > 500


def test_symlinked_kb_folders_are_refused(sandbox):
    client, tmp, _docs, _store = sandbox
    for name in ("evil", "evil_store"):
        assert client.post(f"/knowledge_bases/{name}/documents",
                           files=[("files", ("x.txt", b"pwned"))]).status_code == 400
        assert client.delete(f"/knowledge_bases/{name}?delete_documents=true").status_code == 400
        assert client.post("/knowledge_bases", json={"name": name}).status_code == 400
    assert sorted(p.name for p in (tmp / "outside").iterdir()) == ["secret.txt"]
    assert "evil" not in {k["name"] for k in client.get("/knowledge_bases").json()}


def test_planted_file_links_are_neither_followed_nor_deleted(sandbox):
    client, tmp, docs, _store = sandbox
    r = client.post("/knowledge_bases/kb/documents", files=[("files", ("link.txt", b"overwrite through link"))])
    assert r.json()["files"][0]["status"] == "failed"
    assert (tmp / "outside" / "secret.txt").read_text() == SECRET
    assert client.delete("/knowledge_bases/kb/documents/link.txt").status_code == 404
    assert client.delete("/knowledge_bases/kb/documents/linkdir/secret.txt").status_code in (400, 404)
    assert (docs / "kb" / "link.txt").is_symlink() and (tmp / "outside" / "secret.txt").exists()
    # deleting the KB with its documents removes the links themselves, never their targets
    assert client.delete("/knowledge_bases/kb?delete_documents=true").status_code == 200
    assert not (docs / "kb").exists()
    assert (tmp / "outside" / "secret.txt").read_text() == SECRET
