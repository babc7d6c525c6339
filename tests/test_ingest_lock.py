"""The ingest pipeline never holds the KB's write lock while a file is parsed: a slow (hostile) parse leaves the
KB free for searches and for another ingest, and what was decided without the lock is re-checked under it."""

from __future__ import annotations

import os
import threading
import time
import zipfile

import numpy as np
import pytest

import kb_qa.ingest.pipeline as pipeline
from kb_qa.ingest.limits import ParseLimits, ParseOptions
from kb_qa.ingest.worker import parse_file
from kb_qa.store import KnowledgeBase

BOMB = "Forklift bomb text that parses slowly. " * 40
OTHER = "The warehouse opens at seven in the morning and closes at six. " * 20


class GatedParse:
    """Wraps the real parse: the first parse of a file named `name` signals `entered` and waits for `release`
    (a parse that takes as long as the test wants: the stand-in for a 240 s bomb)."""

    def __init__(self, name: str, during=None):
        self.name, self.during = name, during
        self.entered, self.release = threading.Event(), threading.Event()
        self.real = pipeline.parse_file
        self._first = True

    def __call__(self, path, options, *, name=None, on_progress=None):
        if os.path.basename(path) == self.name and self._first:
            self._first = False
            self.entered.set()
            if self.during is not None:
                self.during(path)
            assert self.release.wait(60), "the test never released the parse"
        return self.real(path, options, name=name, on_progress=on_progress)


def _ingest(settings, fake_embedder, paths, **kwargs):
    kb = KnowledgeBase.open(settings.paths.vector_store_root, "kb", create=True)
    try:
        return pipeline.ingest(kb, paths, settings.ingest, lambda: fake_embedder, embedding_model="fake", **kwargs)
    finally:
        kb.close()


def _in_thread(fn, *args, **kwargs):
    result: dict = {}

    def target():
        try:
            result["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result


def _statuses(report):
    return {o.source: o.status for o in report.outcomes}


@pytest.fixture
def folders(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    (first / "bomb.txt").write_text(BOMB, encoding="utf-8")
    (first / "small.txt").write_text("Small file next to the bomb, about pallets. " * 10, encoding="utf-8")
    (second / "other.txt").write_text(OTHER, encoding="utf-8")
    return first, second


def test_search_and_another_ingest_proceed_while_a_file_is_parsed(settings, fake_embedder, folders, monkeypatch):
    first, second = folders
    gate = GatedParse("bomb.txt")
    monkeypatch.setattr(pipeline, "parse_file", gate)
    _ingest(settings, fake_embedder, [second])  # something to search while the bomb is parsed
    thread, result = _in_thread(_ingest, settings, fake_embedder, [first])
    try:
        assert gate.entered.wait(60)
        kb = KnowledgeBase.open(settings.paths.vector_store_root, "kb")
        with kb.writer(lock_timeout_s=0.5):  # KnowledgeBaseBusy here = the lock is held while parsing
            pass
        query = fake_embedder.encode(["when does the warehouse open"])[0]
        hits = kb.dense_search(query, 3)
        assert hits and kb.get_chunks([hits[0][0]])[hits[0][0]].sources == ("other.txt",)
        (second / "late.txt").write_text("A file added while the bomb is parsed, about trucks. " * 10)
        report = _ingest(settings, fake_embedder, [second], lock_timeout_s=0.5)
        assert _statuses(report) == {"other.txt": "unchanged", "late.txt": "added"}
        assert thread.is_alive(), "the slow ingest is still parsing"
    finally:
        gate.release.set()
        thread.join(60)
    assert "error" not in result, result.get("error")
    assert _statuses(result["value"]) == {"bomb.txt": "added", "small.txt": "added"}
    kb = KnowledgeBase.open(settings.paths.vector_store_root, "kb")
    assert {d.source for d in kb.documents()} == {"bomb.txt", "small.txt", "other.txt", "late.txt"}
    assert kb.info().chunks == len(kb.chunk_ids())


def test_a_file_stored_by_another_ingest_meanwhile_is_rechecked_under_the_lock(settings, fake_embedder, folders,
                                                                               monkeypatch):
    first, _ = folders
    gate = GatedParse("bomb.txt")
    monkeypatch.setattr(pipeline, "parse_file", gate)
    thread, result = _in_thread(_ingest, settings, fake_embedder, [first / "bomb.txt"])
    try:
        assert gate.entered.wait(60)
        other = _ingest(settings, fake_embedder, [first / "bomb.txt"], lock_timeout_s=0.5)
        assert _statuses(other) == {"bomb.txt": "added"}
    finally:
        gate.release.set()
        thread.join(60)
    assert "error" not in result, result.get("error")
    assert _statuses(result["value"]) == {"bomb.txt": "unchanged"}  # not stored twice
    kb = KnowledgeBase.open(settings.paths.vector_store_root, "kb")
    alone = len(pipeline.split_sections(parse_file(first / "bomb.txt", ParseOptions(
        limits=ParseLimits(isolate=False))), "bomb.txt", chunk_size=settings.ingest.chunk_size,
        chunk_overlap=settings.ingest.chunk_overlap))
    assert kb.info().chunks == alone and len(kb.documents()) == 1


def test_a_file_changed_while_it_was_parsed_is_not_stored_under_the_old_hash(settings, fake_embedder, folders,
                                                                             monkeypatch):
    first, _ = folders
    gate = GatedParse("bomb.txt", during=lambda path: open(path, "a").write("appended while parsing\n"))
    gate.release.set()
    monkeypatch.setattr(pipeline, "parse_file", gate)
    report = _ingest(settings, fake_embedder, [first])
    outcome = {o.source: o for o in report.outcomes}
    assert outcome["bomb.txt"].status == "failed" and "changed while it was being read" in outcome["bomb.txt"].reason
    assert outcome["small.txt"].status == "added"
    again = _ingest(settings, fake_embedder, [first])  # the next run stores the file as it is now
    assert _statuses(again) == {"bomb.txt": "added", "small.txt": "unchanged"}


def test_rebuild_parses_before_taking_the_lock(settings, fake_embedder, folders, monkeypatch):
    first, second = folders
    _ingest(settings, fake_embedder, [first, second])
    gate = GatedParse("bomb.txt")
    monkeypatch.setattr(pipeline, "parse_file", gate)
    thread, result = _in_thread(_ingest, settings, fake_embedder, [first], rebuild=True)
    try:
        assert gate.entered.wait(60)
        kb = KnowledgeBase.open(settings.paths.vector_store_root, "kb")
        with kb.writer(lock_timeout_s=0.5):
            pass
        assert {d.source for d in kb.documents()} == {"bomb.txt", "small.txt", "other.txt"}  # old version whole
    finally:
        gate.release.set()
        thread.join(60)
    assert "error" not in result, result.get("error")
    kb = KnowledgeBase.open(settings.paths.vector_store_root, "kb")
    assert {d.source for d in kb.documents()} == {"bomb.txt", "small.txt"}
    vectors = kb.chunk_vectors(kb.chunk_ids())
    assert len(vectors) == kb.info().chunks and all(np.isfinite(v).all() for v in vectors.values())


def sparse_xlsx(path, rows: int):
    """A small .xlsx whose sheet claims 16,384 columns, one cell at each end of every row: openpyxl pads every
    row to full width, so parsing it takes minutes (one of the issue's xlsx bombs, in miniature)."""
    ns = "http://schemas.openxmlformats.org"
    parts = {
        "[Content_Types].xml": f'<Types xmlns="{ns}/package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        '<Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.'
        'spreadsheetml.sheet.main+xml"/><Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/'
        'vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/></Types>',
        "_rels/.rels": f'<Relationships xmlns="{ns}/package/2006/relationships"><Relationship Id="rId1" '
        f'Type="{ns}/officeDocument/2006/relationships/officeDocument" Target="xl/workbook.xml"/></Relationships>',
        "xl/workbook.xml": f'<workbook xmlns="{ns}/spreadsheetml/2006/main" xmlns:r="{ns}/officeDocument/2006/'
        'relationships"><sheets><sheet name="S" sheetId="1" r:id="rId1"/></sheets></workbook>',
        "xl/_rels/workbook.xml.rels": f'<Relationships xmlns="{ns}/package/2006/relationships"><Relationship '
        f'Id="rId1" Type="{ns}/officeDocument/2006/relationships/worksheet" Target="worksheets/sheet1.xml"/>'
        '</Relationships>',
    }
    cells = "".join(f'<row r="{r}"><c r="A{r}" t="inlineStr"><is><t>x</t></is></c>'
                    f'<c r="XFD{r}" t="inlineStr"><is><t>y</t></is></c></row>' for r in range(1, rows + 1))
    parts["xl/worksheets/sheet1.xml"] = (f'<worksheet xmlns="{ns}/spreadsheetml/2006/main"><dimension '
                                         f'ref="A1:XFD{rows}"/><sheetData>{cells}</sheetData></worksheet>')
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for member, text in parts.items():
            z.writestr(member, text)
    return path


def test_two_parses_run_side_by_side_in_worker_processes(tmp_path):
    """A parse stuck on a hostile file does not make the next caller (another ingest) wait for it."""
    bomb = sparse_xlsx(tmp_path / "bomb.xlsx", 20_000)  # minutes of parsing; killed at max_seconds
    plain = tmp_path / "plain.txt"
    plain.write_text("Plain text parsed while another parse is stuck.", encoding="utf-8")
    # (rows of 16,384 columns are refused at row 1 under the default ingest.max_table_columns; allowed here, so
    # that the parse stays stuck padding every row to its XFD cell)
    options = ParseOptions(limits=ParseLimits(max_seconds=20, max_table_columns=16_384))
    thread, result = _in_thread(parse_file, bomb, options)
    time.sleep(1)
    sections = parse_file(plain, options)
    assert "Plain text" in sections[0].text
    assert thread.is_alive(), "the parse of the bomb should still be running"
    thread.join(60)
    assert "took longer than 20 s" in str(result.get("error")), result
