"""ChatGLM2's tokenizer on the sentencepiece package, with exactly ChatGLM2's ids, and its chat prompt format.

- ids: sentencepiece's ids for the text, prefixed with [gMASK] sop (no BOS); the five specials sit right after
  the sentencepiece pieces ([MASK]=n, [gMASK]=n+1, [sMASK]=n+2, sop=n+3, eop=n+4, n = sp.vocab_size()).
- Special tokens are never parsed out of text: "[gMASK]" typed by a user is ordinary text.
- Batches are left-padded with pad id 0, position ids counting from 0 at each row's first real token (as
  ChatGLM2's own tokenizer pads).
Does not load the model, and does not export a `tokenizer.json` (convert.py does).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kb_qa.llm.config import SPECIAL_TOKENS
from kb_qa.schema import History

TOKENIZER_FILE = "tokenizer.model"


def build_chat_prompt(question: str, history: History = ()) -> str:
    """ChatGLM2's dialogue prompt: one `[Round i]` block per past (question, answer), the new one ending in "答："."""
    parts = [f"[Round {i}]\n\n问：{q}\n\n答：{a}\n\n" for i, (q, a) in enumerate(history, start=1)]
    parts.append(f"[Round {len(history) + 1}]\n\n问：{question}\n\n答：")
    return "".join(parts)


class ChatGLM2Tokenizer:
    """`encode`/`decode`/`count_tokens` with ChatGLM2's ids. Thread-safe (sentencepiece encoding is read-only)."""

    padding_side = "left"

    def __init__(self, model_file: str | Path | None = None, *, model_proto: bytes | None = None):
        import sentencepiece as spm

        if (model_file is None) == (model_proto is None):
            raise ValueError("give exactly one of model_file, model_proto")
        if model_file is not None:
            self.model_file: Path | None = Path(model_file)
            if not self.model_file.is_file():
                raise FileNotFoundError(f"tokenizer file not found: {self.model_file}")
            self.sp = spm.SentencePieceProcessor(model_file=str(self.model_file))
        else:
            self.model_file = None
            self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        n = self.sp.vocab_size()
        self.sp_vocab_size = n
        self.special_ids = {name: n + i for i, name in enumerate(SPECIAL_TOKENS)}
        self.vocab_size = n + len(SPECIAL_TOKENS)  # 64794 for chatglm2-6b (the embedding is padded to 65024)
        self.mask_token_id = self.special_ids["[MASK]"]
        self.gmask_token_id = self.special_ids["[gMASK]"]
        self.smask_token_id = self.special_ids["[sMASK]"]
        self.sop_token_id = self.special_ids["sop"]
        self.eop_token_id = self.special_ids["eop"]
        self.bos_token_id = self.sp.bos_id()  # 1, never used in prompts
        self.eos_token_id = self.sp.eos_id()  # 2
        self.pad_token_id = self.sp.unk_id()  # 0 (ChatGLM2 pads with <unk>)
        self.prefix_ids = [self.gmask_token_id, self.sop_token_id]
        self._dropped_on_decode = {self.bos_token_id, self.eos_token_id, self.pad_token_id}

    @classmethod
    def from_folder(cls, folder: str | Path) -> ChatGLM2Tokenizer:
        return cls(Path(folder) / TOKENIZER_FILE)

    @classmethod
    def load(cls, path: str | Path) -> ChatGLM2Tokenizer:
        """From a `tokenizer.model` file alone (no weights needed, e.g. for exact packing counts with a remote
        model) or from a folder holding one."""
        path = Path(path).expanduser()
        return cls.from_folder(path) if path.is_dir() else cls(path)

    # -- single text -----------------------------------------------------------------------------------------
    def encode(self, text: str, *, add_prefix: bool = True) -> list[int]:
        """ids of `text`; with `add_prefix` (a prompt) they start with [gMASK] sop."""
        ids = self.sp.encode(text)
        return [*self.prefix_ids, *ids] if add_prefix else ids

    def count_tokens(self, text: str, *, add_prefix: bool = True) -> int:
        """Tokens `text` takes as a prompt (including the 2-token prefix unless add_prefix=False)."""
        return len(self.encode(text, add_prefix=add_prefix))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`, dropping pad/bos/eos and the special tokens (as ChatGLM2's tokenizer does)."""
        keep = [int(i) for i in ids if 0 <= int(i) < self.sp_vocab_size and int(i) not in self._dropped_on_decode]
        return self.sp.decode(keep)

    def build_chat_prompt(self, question: str, history: History = ()) -> str:
        return build_chat_prompt(question, history)

    # -- batches ---------------------------------------------------------------------------------------------
    def batch_encode(self, texts: Sequence[str], *, add_prefix: bool = True, return_tensors: str | None = "pt"):
        """Left-padded batch: {"input_ids", "attention_mask", "position_ids"} ([batch, longest] each)."""
        rows = [self.encode(t, add_prefix=add_prefix) for t in texts]
        longest = max((len(r) for r in rows), default=0)
        input_ids, attention_mask, position_ids = [], [], []
        for row in rows:
            pad = longest - len(row)
            input_ids.append([self.pad_token_id] * pad + row)
            attention_mask.append([0] * pad + [1] * len(row))
            position_ids.append([0] * pad + list(range(len(row))))
        batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        if return_tensors == "pt":
            import torch

            batch = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
        return batch

    def __repr__(self) -> str:
        where = self.model_file or "<bytes>"
        return f"ChatGLM2Tokenizer({where}, sentencepiece pieces={self.sp_vocab_size}, vocab={self.vocab_size})"


def load_configured_tokenizer(llm_settings) -> ChatGLM2Tokenizer | None:
    """The exact tokenizer for packing and usage counts, without loading weights: `llm.tokenizer_path` (a
    tokenizer.model file or its folder) when set, else the tokenizer.model beside `llm.model_path`; None when
    neither exists (callers then fall back to an over-estimate)."""
    explicit = getattr(llm_settings, "tokenizer_path", None)
    if explicit:
        return ChatGLM2Tokenizer.load(explicit)  # configured but missing: FileNotFoundError names the path
    model_path = getattr(llm_settings, "model_path", None)
    if not model_path:
        return None
    from kb_qa.llm.loader import resolve_checkpoint_path

    folder = resolve_checkpoint_path(model_path)
    if folder is not None and (folder / TOKENIZER_FILE).is_file():
        return ChatGLM2Tokenizer.from_folder(folder)
    return None
