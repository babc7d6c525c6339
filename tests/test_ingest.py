"""The ingest pipeline end to end, with the real embedding model: incremental, deduplicating, durable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CountingEmbedder

from kb_qa.ingest.pipeline import ingest
from kb_qa.store import EmbeddingMismatch, KnowledgeBase, KnowledgeBaseBusy

REPO = Path(__file__).resolve().parents[1]

ZH = ("知识库问答系统把文档切分成段落，再用向量检索找到相关段落。" * 3 + "\n\n"
      + "检索到的段落和问题一起交给大模型生成答案，并标注出处。" * 3)
EN = ("The warehouse opens at seven in the morning and closes at six in the evening. " * 4 + "\n\n"
      + "Forklift drivers must renew their licence every two years. " * 4)


@pytest.fixture
def docs(tmp_path):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "zh.txt").write_text(ZH, encoding="utf-8")
    (folder / "sub" / "en.md").write_text("# Rules\n\n" + EN, encoding="utf-8")
    (folder / ".hidden.txt").write_text("should be skipped", encoding="utf-8")
    (folder / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # not a document type: skipped when walking
    return folder


def run(app, paths, embedder=None, **kwargs):
    factory = (lambda: embedder) if embedder is not None else (lambda: pytest.fail("embedding model was loaded"))
    return ingest(app.kb("kb", create=True), paths, app.settings.ingest, factory,
                  embedding_model=app.settings.embedding.model, **kwargs)


def statuses(report):
    return {o.source: o.status for o in report.outcomes}


def test_folder_ingest_then_unchanged_costs_nothing(app, docs, embedder):
    counting = CountingEmbedder(embedder)
    report = run(app, [docs], counting)
    assert statuses(report) == {"zh.txt": "added", "sub/en.md": "added"}
    assert report.chunks_embedded == counting.texts > 2
    kb = app.kb("kb")
    assert {d.source for d in kb.documents()} == {"zh.txt", "sub/en.md"}
    again = run(app, [docs])  # would fail if the model were loaded
    assert statuses(again) == {"zh.txt": "unchanged", "sub/en.md": "unchanged"}
    assert again.chunks_embedded == 0


def test_changed_file_with_same_name_and_size_replaces_its_chunks(app, docs, embedder):
    run(app, [docs], CountingEmbedder(embedder))
    kb = app.kb("kb")
    before = kb.chunk_ids_for_sources(["sub/en.md"])
    text = (docs / "sub" / "en.md").read_text(encoding="utf-8")
    changed = text.replace("seven", "eight").replace("Forklift", "Crane-op")  # same length
    assert len(changed) == len(text)
    (docs / "sub" / "en.md").write_text(changed, encoding="utf-8")
    report = run(app, [docs], CountingEmbedder(embedder))
    assert statuses(report) == {"zh.txt": "unchanged", "sub/en.md": "updated"}
    after = kb.chunk_ids_for_sources(["sub/en.md"])
    assert after and not (after & before)
    texts = " ".join(c.text for c in kb.get_chunks(after).values())
    assert "eight" in texts and "seven" not in texts


def test_same_bytes_under_two_names_embedded_once(app, docs, embedder):
    (docs / "copy_of_zh.txt").write_bytes((docs / "zh.txt").read_bytes())
    counting = CountingEmbedder(embedder)
    report = run(app, [docs], counting)
    assert statuses(report)["copy_of_zh.txt"] == "added"
    kb = app.kb("kb")
    n_zh = len(kb.chunk_ids_for_sources(["zh.txt"]))
    assert kb.chunk_ids_for_sources(["zh.txt"]) == kb.chunk_ids_for_sources(["copy_of_zh.txt"])
    assert counting.texts == kb.info().chunks  # the copy's chunks were not embedded again
    assert kb.info().chunks < n_zh * 2 + len(kb.chunk_ids_for_sources(["sub/en.md"]))


def test_prune_and_rebuild(app, docs, embedder):
    run(app, [docs], CountingEmbedder(embedder))
    (docs / "zh.txt").unlink()
    report = run(app, [docs], prune=True)
    assert statuses(report) == {"sub/en.md": "unchanged", "zh.txt": "removed"}
    assert {d.source for d in app.kb("kb").documents()} == {"sub/en.md"}
    counting = CountingEmbedder(embedder)
    rebuilt = run(app, [docs], counting, rebuild=True)
    assert statuses(rebuilt) == {"sub/en.md": "added"} and counting.texts == app.kb("kb").info().chunks


def test_bad_files_fail_alone_and_never_lose_stored_content(app, docs, embedder):
    run(app, [docs], CountingEmbedder(embedder))
    kb = app.kb("kb")
    stored = kb.chunk_ids_for_sources(["zh.txt"])
    (docs / "zh.txt").write_text("   \n\n  ", encoding="utf-8")  # the new version is empty: keep the old one
    (docs / "empty.txt").write_bytes(b"")
    (docs / "fake.pdf").write_bytes(b"MZ\x90\x00" + bytes(200))  # an .exe renamed .pdf
    (docs / "truncated.pdf").write_bytes(b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog")
    (docs / "good.txt").write_text("A new good document about bananas and apples.", encoding="utf-8")
    app.settings.ingest.max_file_mb = 0.001  # ~1 KB
    (docs / "big.txt").write_text("x" * 5000, encoding="utf-8")
    report = run(app, [docs, docs / "missing.txt"], CountingEmbedder(embedder))
    outcome = {o.source: o for o in report.outcomes}
    assert outcome["good.txt"].status == "added"
    assert outcome["sub/en.md"].status == "unchanged"
    for name, reason in [("zh.txt", "empty"), ("empty.txt", "empty"), ("fake.pdf", ""), ("truncated.pdf", ""),
                         ("big.txt", "over the limit"), (str(docs / "missing.txt"), "does not exist")]:
        assert outcome[name].status == "failed", name
        assert reason in outcome[name].reason and outcome[name].reason, (name, outcome[name].reason)
    assert kb.chunk_ids_for_sources(["zh.txt"]) == stored
    assert "good.txt" in {d.source for d in kb.documents()}


def test_other_embedding_model_is_refused(app, docs, embedder):
    run(app, [docs], CountingEmbedder(embedder))
    with pytest.raises(EmbeddingMismatch, match="--rebuild"):
        ingest(app.kb("kb"), [docs], app.settings.ingest, lambda: embedder, embedding_model="BAAI/bge-small-zh-v1.5")


def test_busy_knowledge_base(app, docs, embedder):
    kb = app.kb("kb", create=True)
    with kb.writer():
        with pytest.raises(KnowledgeBaseBusy, match="busy"):
            # a second writer (here: the same process through another lock handle) must not interleave
            KnowledgeBase(kb.path.parent, "kb")._write_lock(0.2).__enter__()


def _cli(args, tmp_path, **env):
    environ = dict(os.environ, HF_HUB_OFFLINE="1",
                   KB_QA_PATHS__KNOWLEDGE_BASE_ROOT=str(tmp_path / "kbroot"),
                   KB_QA_PATHS__VECTOR_STORE_ROOT=str(tmp_path / "store"), **env)
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=environ, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_cli_ingest_json_and_kb_management(tmp_path, docs):
    proc = _cli(["kb_qa.ingest", str(docs), "--kb", "cli", "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert {f["source"]: f["status"] for f in report["files"]} == {"zh.txt": "added", "sub/en.md": "added"}
    listed = _cli(["kb_qa.kb", "--json", "list"], tmp_path)
    assert json.loads(listed.stdout)[0]["name"] == "cli"
    removed = _cli(["kb_qa.kb", "remove", "cli", "zh.txt"], tmp_path)
    assert removed.returncode == 0 and "removed: zh.txt" in removed.stdout
    shown = json.loads(_cli(["kb_qa.kb", "--json", "show", "cli"], tmp_path).stdout)
    assert [d["source"] for d in shown["documents"]] == ["sub/en.md"]
    bad = _cli(["kb_qa.ingest", str(docs), "--kb", "../evil"], tmp_path)
    assert bad.returncode == 2 and "invalid knowledge base name" in bad.stderr
    assert not (tmp_path / "evil").exists()
    failed = _cli(["kb_qa.ingest", str(tmp_path / "nope"), "--kb", "cli"], tmp_path)
    assert failed.returncode == 1 and "does not exist" in failed.stdout
    deleted = _cli(["kb_qa.kb", "delete", "cli"], tmp_path)
    assert deleted.returncode == 0 and not (tmp_path / "store" / "cli").exists()


def test_rebuild_is_atomic_readers_keep_the_old_version_and_a_failed_one_leaves_it_whole(app, docs, embedder):
    """A rebuild spanning several embedding batches (commit_every_chunks=1: one batch per file) builds the new
    version beside the old one: readers see the old version until the end, and a rebuild that dies half way
    (here: the embedder fails on the second batch, as a kill would) leaves the old version whole."""
    for i in range(4):
        (docs / f"extra{i}.txt").write_text(f"Extra document number {i} about cranes and pallets. " * 3,
                                            encoding="utf-8")
    run(app, [docs], CountingEmbedder(embedder))
    kb = app.kb("kb")
    old = {d.source: d.sha256 for d in kb.documents()}
    old_chunks = kb.info().chunks
    app.settings.ingest.commit_every_chunks = 1
    seen = []

    class FailsOnSecondBatch(CountingEmbedder):
        def encode(self, texts):
            reader = KnowledgeBase.open(app.store_root, "kb")  # another reader, as the web page or API would be
            seen.append((reader.info().documents, reader.chunk_count()))
            reader.close()
            if len(seen) == 2:
                raise OSError("simulated crash in the middle of a rebuild")
            return super().encode(texts)

    with pytest.raises(OSError, match="simulated"):
        run(app, [docs], FailsOnSecondBatch(embedder), rebuild=True)
    assert seen == [(len(old), old_chunks)] * 2  # readers saw the old version throughout
    kb.close()
    assert {d.source: d.sha256 for d in kb.documents()} == old and kb.info().chunks == old_chunks
    ok = run(app, [docs], CountingEmbedder(embedder), rebuild=True)  # the re-run completes it
    assert not ok.failed and kb.info().chunks == old_chunks and kb.info().documents == len(old)
