"""Uploads are stored under their knowledge base's folder only, sanitised, size-limited, atomic."""

from __future__ import annotations

import os

import pytest

from kb_qa.naming import InvalidName, safe_join, sanitize_filename, validate_doc_path
from kb_qa.uploads import UploadRejected, save_upload

EXT = frozenset({".txt", ".md"})


def snapshot(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("name, stored", [
    ("../../etc/passwd.txt", "passwd.txt"),
    ("..\\..\\windows\\win.txt", "win.txt"),
    ("/abs/path/a.txt", "a.txt"),
    ("C:\\Users\\x\\b.txt", "b.txt"),
    ("nul\x00byte.txt", "nulbyte.txt"),
    ("ctrl\x1b[31m.txt", "ctrl[31m.txt"),
    ("中文 文档.md", "中文 文档.md"),
    ("..hidden.txt", "hidden.txt"),
])
def test_names_are_sanitised_and_stay_inside(tmp_path, name, stored):
    docs = tmp_path / "kb_docs"
    saved = save_upload(docs, "kb", name, b"hello", max_bytes=100, extensions=EXT)
    assert saved.name == stored
    assert saved.path.parent == (docs / "kb").resolve()
    assert snapshot(tmp_path) == ["kb_docs", "kb_docs/kb", f"kb_docs/kb/{stored}"]


@pytest.mark.parametrize("name", ["..", "/", "...", "\x00", "dir/", "a.exe", "noext"])
def test_unusable_names_are_rejected(tmp_path, name):
    with pytest.raises(UploadRejected):
        save_upload(tmp_path, "kb", name, b"x", max_bytes=100, extensions=EXT)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


@pytest.mark.parametrize("kb", ["..", "../x", "a/b", "", ".x", "a\x00"])
def test_bad_kb_names_are_rejected(tmp_path, kb):
    with pytest.raises(InvalidName):
        save_upload(tmp_path, kb, "a.txt", b"x", max_bytes=100, extensions=EXT)
    assert list(tmp_path.iterdir()) == []


def test_size_limit_and_same_content(tmp_path):
    with pytest.raises(UploadRejected, match="over the upload limit"):
        save_upload(tmp_path, "kb", "big.txt", b"x" * 101, max_bytes=100, extensions=EXT)
    first = save_upload(tmp_path, "kb", "a.txt", b"same", max_bytes=100, extensions=EXT)
    again = save_upload(tmp_path, "kb", "a.txt", b"same", max_bytes=100, extensions=EXT)
    assert not first.unchanged and again.unchanged
    changed = save_upload(tmp_path, "kb", "a.txt", b"new!", max_bytes=100, extensions=EXT)
    assert not changed.unchanged and changed.path.read_bytes() == b"new!"
    assert [p.name for p in (tmp_path / "kb").iterdir()] == ["a.txt"]  # no temporary files left


def test_symlink_in_the_folder_cannot_redirect_a_write(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    (tmp_path / "kb").mkdir()
    os.symlink(outside, tmp_path / "kb" / "link.txt")
    with pytest.raises(UploadRejected):
        save_upload(tmp_path, "kb", "link.txt", b"evil", max_bytes=100, extensions=EXT)
    assert outside.read_text() == "keep me"


def test_doc_paths():
    assert validate_doc_path("a/b.txt") == "a/b.txt"
    assert validate_doc_path("a\\b.txt") == "a/b.txt"
    for bad in ["../a", "/a", "a/../../b", "", "C:/x", "a//b", "a\x00"]:
        with pytest.raises(InvalidName):
            validate_doc_path(bad)


def test_safe_join_refuses_symlinked_dirs(tmp_path):
    (tmp_path / "root").mkdir()
    os.symlink(tmp_path, tmp_path / "root" / "up")
    with pytest.raises(InvalidName):
        safe_join(tmp_path / "root", "up/secret.txt")


def test_sanitize_keeps_extension_when_truncating():
    name = sanitize_filename("长" * 200 + ".pdf")
    assert name.endswith(".pdf") and len(name.encode()) <= 255


def test_symlinked_kb_folder_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "docs").mkdir()
    os.symlink(outside, tmp_path / "docs" / "evil")
    with pytest.raises(UploadRejected, match="symbolic link"):
        save_upload(tmp_path / "docs", "evil", "x.txt", b"x", max_bytes=100, extensions=EXT)
    from kb_qa.store import KnowledgeBase, KnowledgeBaseError

    os.symlink(outside, tmp_path / "store")  # the root itself may be a link; a KB folder may not
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", outside / "kb")
    with pytest.raises(KnowledgeBaseError, match="symbolic link"):
        KnowledgeBase.open(tmp_path / "store", "kb", create=True)
    assert list(outside.iterdir()) == [outside / "kb"] and list((tmp_path / "real").iterdir()) == []
