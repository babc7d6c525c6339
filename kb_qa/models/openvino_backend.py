"""embedding.backend 'openvino' (the CPU default): the whole sentence-transformers pipeline converted once to an
OpenVINO model, run in OpenVINO's default CPU precision: bf16 on CPUs with native bf16 (AVX512-BF16, AMX), else
f32. Cosine to torch's vectors >= 0.9999, ~3x torch's throughput on a 2-core Zen CPU. Needs `openvino`.
OpenVINO's telemetry is off for the process before openvino is imported (kb_qa.models.telemetry, run by
kb_qa/__init__.py; `require` below runs it again in case kb_qa's import was bypassed)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from kb_qa.models.backend import require
from kb_qa.models.converted import ConvertedBackend, finish, load_pipeline
from kb_qa.models.telemetry import disable_openvino_telemetry

if TYPE_CHECKING:
    from kb_qa.settings import EmbeddingSettings


def _openvino():
    disable_openvino_telemetry()
    return require("openvino", "openvino")


def convert(model_path: str, out: Path) -> None:
    ov = _openvino()
    import torch

    module, tokenizer, names, meta, sample = load_pipeline(model_path)
    inputs = [(n, ov.PartialShape([-1, -1]), ov.Type.i64) for n in names]  # (batch, sequence), both dynamic
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ov.convert_model(module, example_input=sample, input=inputs)
    ov.save_model(model, str(out / "model.xml"), compress_to_fp16=False)  # keep f32 weights
    finish(out, tokenizer, meta, "openvino")


class OpenVINOBackend(ConvertedBackend):
    def __init__(self, model_path: str, settings: EmbeddingSettings):
        ov = _openvino()
        super().__init__(model_path, settings)
        # LATENCY: one stream using every core for each batch (ingest sends one batch at a time).
        self.compiled = ov.Core().compile_model(str(self.folder / "model.xml"), "CPU", {"PERFORMANCE_HINT": "LATENCY"})
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")  # bf16 or f32, chosen by OpenVINO for the CPU
        self.precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        self.device = f"cpu, {self.precision}"
        self._request = self.compiled.create_infer_request()

    def _run(self, feed: dict):
        return self._request.infer(feed)[0].copy()  # the output tensor is reused by the next call
