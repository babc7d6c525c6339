"""What the converted backends (OpenVINO, ONNX Runtime) share: the sentence-transformers pipeline as one torch
module to convert (transformer + pooling -> sentence_embedding), the metadata written beside a conversion, and
`ConvertedBackend`, which runs a converted model from the cache with our own tokenizing (the tokenizer saved with
it: the same ids and truncation as the torch path), in batches of similar length. CPU only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from kb_qa.models.backend import EmbeddingBackendUnavailable, embedding_dimension
from kb_qa.models.cache import RECIPES, ensure_converted

if TYPE_CHECKING:
    from kb_qa.settings import EmbeddingSettings

INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # the order of Pipeline.forward's parameters


def load_pipeline(model_path: str):
    """(torch module: token ids -> sentence_embedding, tokenizer, input names, meta, sample inputs)."""
    import torch
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(model_path, device="cpu", local_files_only=True)
    if getattr(st, "default_prompt_name", None):
        raise EmbeddingBackendUnavailable(
            f"{model_path}: models with a default prompt are not converted; set embedding.backend: torch")
    tokenizer = st.tokenizer
    names = [n for n in INPUTS if n in tokenizer.model_input_names]  # input_ids, attention_mask[, token_type_ids]

    class Pipeline(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.st = st

        def forward(self, input_ids, attention_mask, token_type_ids=None):  # named: converters read the names
            features = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                features["token_type_ids"] = token_type_ids
            return self.st(features)["sentence_embedding"]

    meta = {"source": model_path, "inputs": names, "dimension": embedding_dimension(st),
            "max_seq_length": int(st.max_seq_length or tokenizer.model_max_length)}
    sample = tokenizer(["一个例子。", "An example sentence, a little longer."], padding=True, return_tensors="pt")
    return Pipeline().eval(), tokenizer, names, meta, tuple(sample[n] for n in names)


def finish(out: Path, tokenizer, meta: dict, backend: str) -> None:
    """Save the tokenizer and export.json (written last: its presence marks a complete conversion)."""
    tokenizer.save_pretrained(str(out))
    meta = meta | {"backend": backend, "recipe": RECIPES[backend]}
    (out / "export.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")


class ConvertedBackend:
    """A converted model in the cache; subclasses compile it and implement `_run(feed) -> (batch, dim)`."""

    def __init__(self, model_path: str, settings: EmbeddingSettings):
        self.folder = ensure_converted(settings, model_path)
        from transformers import AutoTokenizer

        meta = json.loads((self.folder / "export.json").read_text(encoding="utf-8"))
        self.inputs: list[str] = meta["inputs"]
        self.dimension = int(meta["dimension"])
        self.max_length = int(settings.max_seq_length or meta["max_seq_length"])
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
        self.device = "cpu"

    def _run(self, feed: dict):
        raise NotImplementedError

    def encode(self, texts: list[str], batch_size: int):
        import numpy as np

        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # less padding per batch
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation="longest_first",
                                 max_length=self.max_length, return_tensors="np")
            out[idx] = self._run({name: enc[name].astype(np.int64) for name in self.inputs})
        return out
