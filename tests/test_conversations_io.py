"""The page's own files (kb_qa.conversations) on a full disk or a failing one: every failed save is one
`SaveFailed` line, and what was stored before is intact (no half file, no half line, no temporary file left).
Faults are injected with tests/io_faults.py (the k-th call of one os-level write primitive fails)."""

from __future__ import annotations

import json

import pytest

from kb_qa.conversations import Conversation, ConversationStore, SaveFailed, Turn
from kb_qa.errors import StorageError
from tests.io_faults import inject

SAVE_SITES = ("os.open", "os.write", "os.fsync", "os.replace")


def leftovers(root):
    return sorted(p.name for p in root.rglob(".tmp-*"))


@pytest.mark.parametrize("site", SAVE_SITES)
def test_a_failed_conversation_save_keeps_the_stored_one(tmp_path, monkeypatch, site):
    store = ConversationStore(tmp_path)
    conv = Conversation(turns=[Turn("first?", "first answer")])
    store.save("alice", conv)
    conv.turns.append(Turn("second?", "second answer"))
    with inject(monkeypatch, site, 1) as fault, pytest.raises(SaveFailed) as failed:
        store.save("alice", conv)
    assert fault.fired
    message = str(failed.value)
    assert message.startswith("Saving the conversation failed: No space left on device")
    assert "intact" in message and "Free some space" in message and "\n" not in message
    assert isinstance(failed.value, StorageError) and isinstance(failed.value, OSError)
    kept = store.load("alice", conv.id)
    assert [t.question for t in kept.turns] == ["first?"]  # the stored version, whole
    assert leftovers(tmp_path) == []
    store.save("alice", conv)  # space again: the next save stores everything the page kept
    assert [t.question for t in store.load("alice", conv.id).turns] == ["first?", "second?"]


def test_a_first_save_that_cannot_make_its_folder_leaves_nothing(tmp_path, monkeypatch):
    store = ConversationStore(tmp_path)
    with inject(monkeypatch, "os.mkdir", 1, "EIO"), pytest.raises(SaveFailed) as failed:
        store.save("bob", Conversation(turns=[Turn("q?", "a")]))
    assert "Input/output error" in str(failed.value) and "Free some space" not in str(failed.value)
    assert store.list("bob") == [] and leftovers(tmp_path) == []


@pytest.mark.parametrize("site", ("os.open", "os.write", "os.fsync"))
def test_a_failed_rating_leaves_the_earlier_ones_and_no_half_line(tmp_path, monkeypatch, site):
    store = ConversationStore(tmp_path)
    turn = Turn("q?", "a", rating=1)
    store.add_feedback("alice", "c1", turn, 1)
    before = store.feedback_path.read_bytes()
    with inject(monkeypatch, site, 1) as fault, pytest.raises(SaveFailed) as failed:
        store.add_feedback("alice", "c2", turn, -1)
    assert fault.fired and str(failed.value).startswith("Saving your rating failed: No space left on device")
    assert store.feedback_path.read_bytes() == before  # cut back to where it was
    store.add_feedback("alice", "c3", turn, 1)
    assert [r["conversation"] for r in store.feedback()] == ["c1", "c3"]


def test_a_half_line_from_an_old_crash_does_not_swallow_the_next_rating(tmp_path):
    store = ConversationStore(tmp_path)
    store.add_feedback("alice", "c1", Turn("q?", "a"), 1)
    with open(store.feedback_path, "ab") as handle:
        handle.write(b'{"time": 1, "conversation": "cut')  # what a crash in the middle of a write leaves
    store.add_feedback("alice", "c2", Turn("q?", "a"), 1)
    assert [r["conversation"] for r in store.feedback()] == ["c1", "c2"]
    lines = store.feedback_path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["conversation"] == "c2"


@pytest.mark.parametrize("site", ("os.fsync", "os.replace"))
def test_a_failed_settings_save_keeps_the_stored_settings(tmp_path, monkeypatch, site):
    store = ConversationStore(tmp_path)
    store.save_settings("alice", {"top_k": 3})
    with inject(monkeypatch, site, 1), pytest.raises(SaveFailed, match="^Saving your settings failed"):
        store.save_settings("alice", {"top_k": 9})
    assert store.load_settings("alice") == {"top_k": 3} and leftovers(tmp_path) == []
