"""Find a ChatGLM2 checkpoint, choose device and precision, check memory, and load it as `GlmForCausalLM`.

- Sources: a local folder in ChatGLM2's original format (converted in memory, shard by shard), a folder written by
  `python -m kb_qa.llm.convert` (model_type "glm", loaded with `from_pretrained`), or a repo id found in the local
  Hugging Face cache. Nothing is downloaded.
- Device: 'auto' = cuda > mps > cpu. Precision: bf16 on GPUs that support it, else fp16; fp32 on CPU (bf16 if asked).
- Memory: estimated before loading (weights + 8K KV cache + prefill activations); not enough ->
  `InsufficientMemoryError` naming the settings that would fit. Several GPUs: layers spread with an accelerate
  device map when one is too small.
- int8/int4: bitsandbytes through transformers' quantizer (needs CUDA); an original-format checkpoint is converted
  once to a cache folder for that.
Does not generate (generation.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kb_qa.llm.config import (
    ChatGLM2Config,
    glm_num_parameters,
    is_chatglm2_config,
    parse_chatglm2_config,
    read_config,
    to_glm_config,
)
from kb_qa.llm.tokenizer import TOKENIZER_FILE, ChatGLM2Tokenizer
from kb_qa.models.resolve import auto_device, find_in_hf_cache

log = logging.getLogger(__name__)

GiB = 1024**3
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says why and what to change."""


class InsufficientMemoryError(ModelLoadError):
    def __init__(self, message: str, *, needed_bytes: int, free_bytes: int):
        super().__init__(message)
        self.needed_bytes = needed_bytes
        self.free_bytes = free_bytes


@dataclass
class LoadedModel:
    model: torch.nn.Module  # GlmForCausalLM, eval mode, no grad
    tokenizer: ChatGLM2Tokenizer
    device: torch.device  # where inputs go (the embedding's device)
    dtype: torch.dtype  # compute dtype
    quantization: str  # 'none' | 'int8' | 'int4'
    source: Path
    num_parameters: int
    devices: list[str] = field(default_factory=list)  # every device holding layers
    checkpoint_note: str = ""  # e.g. "int4 checkpoint dequantized"

    def describe(self) -> str:
        where = ",".join(self.devices) if self.devices else str(self.device)
        precision = _DTYPE_NAMES.get(self.dtype, str(self.dtype))
        quant = f" {self.quantization}" if self.quantization != "none" else ""
        note = f" ({self.checkpoint_note})" if self.checkpoint_note else ""
        return f"ChatGLM2 on {where} {precision}{quant}{note}"


# -- where the checkpoint is ---------------------------------------------------------------------------------
def resolve_checkpoint_path(model_path: str | os.PathLike) -> Path | None:
    """`llm.model_path` -> a local folder, or a repo id's snapshot in the local Hugging Face cache (the same
    lookup as the embedder's, kb_qa.models.resolve.find_in_hf_cache); None when neither exists."""
    path = Path(model_path).expanduser()
    if path.is_dir():
        return path
    text = str(model_path)
    if not _REPO_ID.match(text) or path.exists():
        return None
    return find_in_hf_cache(text)


# -- device, precision, memory --------------------------------------------------------------------------------
def pick_device(setting: str = "auto") -> torch.device:
    """`llm.device` -> a torch device: 'auto' by kb_qa.models.resolve.auto_device (cuda:0 > mps > cpu); an explicit
    device is checked to exist here, so a wrong setting fails before the weights are read."""
    setting = (setting or "auto").strip().lower()
    if setting == "auto":
        setting = auto_device()
    device = torch.device(setting)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(f"llm.device={setting!r} but CUDA is not available here; use 'auto' or 'cpu'")
        if device.index is None:
            device = torch.device("cuda", 0)
        if device.index >= torch.cuda.device_count():
            raise ModelLoadError(f"llm.device={setting!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError("llm.device='mps' but MPS is not available here; use 'auto' or 'cpu'")
    return device


def pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting and setting != "auto":
        dtype = _DTYPES[setting]
        if device.type == "cpu" and dtype == torch.float16:
            raise ModelLoadError("llm.dtype=float16 is very slow or unsupported on CPU; use float32 or bfloat16")
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def estimate_memory_bytes(num_parameters: int, *, dtype: torch.dtype, quantization: str = "none",
                          embedding_parameters: int = 0, kv_bytes_per_token: int = 0, context_tokens: int = 8192,
                          activation_bytes_per_token: int = 0) -> int:
    """Device memory to load and run the model: weights + KV cache for `context_tokens` + prefill activations
    + a margin. For chatglm2-6b bf16 and an 8K window: about 12.7 GiB (the official minimum is 13.1 GB for fp16)."""
    element = torch.finfo(dtype).bits // 8
    if quantization == "none":
        weights = num_parameters * element
    else:
        # bitsandbytes quantizes the Linear layers; the embedding and lm_head stay in the compute dtype.
        linear = num_parameters - embedding_parameters
        per_param = {"int8": 1.0, "int4": 0.55}[quantization]  # nf4 + double-quant statistics ~ 4.13 bits
        weights = int(linear * per_param) + embedding_parameters * element
    kv = kv_bytes_per_token * context_tokens
    activations = activation_bytes_per_token * context_tokens
    return int((weights + kv + activations) * 1.05) + 256 * 1024**2


def free_memory_bytes(device: torch.device) -> int | None:
    """Free memory where the weights will live; None when unknown (the check is then skipped)."""
    try:
        if device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(device)
            return int(free)
        if device.type == "mps":
            return int(torch.mps.recommended_max_memory() - torch.mps.current_allocated_memory())
        try:
            import psutil

            return int(psutil.virtual_memory().available)
        except ImportError:
            with open("/proc/meminfo", encoding="ascii") as handle:
                for line in handle:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
    except Exception as error:  # a probe failing must not stop loading
        log.debug("free memory probe failed on %s: %s", device, error)
    return None


def _sizes(glm_config) -> dict[str, int]:
    c = glm_config
    head_dim = c.head_dim or c.hidden_size // c.num_attention_heads
    out_embeddings = 0 if c.tie_word_embeddings else c.vocab_size * c.hidden_size
    return {
        "num_parameters": glm_num_parameters(c),
        "embedding_parameters": c.vocab_size * c.hidden_size + out_embeddings,
        # 2 (K,V) x layers x groups x head_dim elements per token: 28 KB per token in fp16 for chatglm2-6b
        "kv_elements_per_token": 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim,
        # prefill peak per token: the MLP's gate_up output (2 x ffn) and a few hidden-size temporaries
        "activation_elements_per_token": 2 * c.intermediate_size + 4 * c.hidden_size,
    }


def estimate_for(glm_config, dtype: torch.dtype, quantization: str, context_tokens: int) -> int:
    s = _sizes(glm_config)
    element = torch.finfo(dtype).bits // 8
    return estimate_memory_bytes(
        s["num_parameters"], dtype=dtype, quantization=quantization, embedding_parameters=s["embedding_parameters"],
        kv_bytes_per_token=s["kv_elements_per_token"] * element, context_tokens=context_tokens,
        activation_bytes_per_token=s["activation_elements_per_token"] * element,
    )


def check_memory(glm_config, *, device: torch.device, dtype: torch.dtype, quantization: str, context_tokens: int,
                 free_bytes: int | None) -> int:
    """Raise `InsufficientMemoryError` ("needs X GiB, Y free; try ...") when the estimate exceeds `free_bytes`."""
    needed = estimate_for(glm_config, dtype, quantization, context_tokens)
    if free_bytes is None or needed <= free_bytes:
        return needed
    precision = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}[dtype]
    what = f"ChatGLM2 ({_sizes(glm_config)['num_parameters'] / 1e9:.2f}B parameters) in {precision}"
    if quantization != "none":
        what += f" quantized {quantization}"
    tips = []
    if device.type == "cuda":
        for option in ("int8", "int4"):
            if option == quantization or (quantization == "int4" and option == "int8"):
                continue
            need = estimate_for(glm_config, dtype, option, context_tokens)
            if need <= free_bytes:
                tips.append(f"llm.quantization={option} (about {need / GiB:.1f} GiB)")
    if dtype == torch.float32:
        need = estimate_for(glm_config, torch.bfloat16, quantization, context_tokens)
        if need <= free_bytes:
            tips.append(f"llm.dtype=bfloat16 (about {need / GiB:.1f} GiB)")
    smaller = max(1024, context_tokens // 4)
    if smaller < context_tokens:
        need = estimate_for(glm_config, dtype, quantization, smaller)
        if need <= free_bytes:
            tips.append(f"llm.max_context_tokens={smaller} (about {need / GiB:.1f} GiB)")
    if device.type != "cpu":
        tips.append("llm.device=cpu (slow)")
    hint = "; try " + " or ".join(tips) if tips else "; free some memory or use a machine with more"
    raise InsufficientMemoryError(
        f"{what} on {device} needs about {needed / GiB:.1f} GiB, {free_bytes / GiB:.1f} GiB free{hint}",
        needed_bytes=needed, free_bytes=free_bytes,
    )


# -- loading ---------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _empty_model(glm_config, dtype: torch.dtype):
    """GlmForCausalLM with parameters on the meta device (no memory) in `dtype`; buffers real, in fp32."""
    from accelerate import init_empty_weights
    from transformers import GlmForCausalLM

    with _default_dtype(dtype), init_empty_weights(include_buffers=False):
        model = GlmForCausalLM(glm_config)
    return model


def _set_tensor(model: torch.nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    expected = module._parameters.get(leaf)
    if expected is None:
        raise ModelLoadError(f"converted weight {name} has no place in GlmForCausalLM")
    if tuple(expected.shape) != tuple(tensor.shape):
        raise ModelLoadError(
            f"weight {name}: shape {tuple(tensor.shape)} but the config implies {tuple(expected.shape)}"
        )
    module._parameters[leaf] = torch.nn.Parameter(tensor, requires_grad=False)


def _device_for(name: str, device_map: dict[str, str | int] | None, default: torch.device) -> torch.device | str:
    if not device_map:
        return default
    parts = name.split(".")
    for cut in range(len(parts), -1, -1):
        key = ".".join(parts[:cut])
        if key in device_map:
            target = device_map[key]
            return torch.device("cuda", target) if isinstance(target, int) else target
    return default


def _plan_devices(model, glm_config, *, device: torch.device, device_setting: str, dtype: torch.dtype,
                  quantization: str, context_tokens: int, free_memory) -> dict | None:
    """None (everything on `device`) or an accelerate device map over all GPUs when one is too small."""
    free = free_memory(device)
    try:
        check_memory(glm_config, device=device, dtype=dtype, quantization=quantization,
                     context_tokens=context_tokens, free_bytes=free)
        return None
    except InsufficientMemoryError as single_error:
        spread = device.type == "cuda" and device_setting in ("auto", "cuda") and torch.cuda.device_count() > 1
        if not spread:
            raise
        frees = {i: free_memory(torch.device("cuda", i)) or 0 for i in range(torch.cuda.device_count())}
        total_free = sum(frees.values())
        needed = estimate_for(glm_config, dtype, quantization, context_tokens)
        if needed > total_free:
            raise InsufficientMemoryError(
                f"{single_error} (all {len(frees)} GPUs together have {total_free / GiB:.1f} GiB free)",
                needed_bytes=needed, free_bytes=total_free,
            ) from None
        if model is None:
            return {"__spread__": frees}
        from accelerate import infer_auto_device_map

        # Leave each GPU its share of the KV cache and activations beyond the weights.
        overhead = (needed - glm_num_parameters(glm_config) * (torch.finfo(dtype).bits // 8)) // len(frees)
        max_memory = {i: max(0, f - overhead) for i, f in frees.items()}
        device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=["GlmDecoderLayer"],
                                           dtype=dtype)
        log.info("spreading ChatGLM2 over %d GPUs: %s", len(frees), sorted(set(device_map.values()), key=str))
        return device_map


def load_chatglm2(model_path: str | os.PathLike, *, device: str = "auto", dtype: str = "auto",
                  quantization: str = "none", max_context_tokens: int = 8192, free_memory=None,
                  prequantized: str = "auto", adapter: str | os.PathLike | None = None) -> LoadedModel:
    """Load a ChatGLM2 checkpoint (original or converted folder, or cached repo id) as GlmForCausalLM.

    `free_memory(device) -> bytes | None` is the probe used by the memory check (tests pass a fake one).
    `prequantized` (official int4/int8 checkpoints only): 'auto' = 'packed' on CUDA, 'dequantize' elsewhere.
    `adapter`: a PEFT LoRA folder merged into the weights after loading (adapters.py).
    """
    loaded = _load(model_path, device=device, dtype=dtype, quantization=quantization,
                   max_context_tokens=max_context_tokens, free_memory=free_memory, prequantized=prequantized)
    if adapter and _is_ptuning(adapter):
        from kb_qa.llm.prefix import load_prefix

        # read by ChatGLM2Generator; torch's stubs type Module.__setattr__ as Tensor | Module only
        loaded.model.kb_qa_prefix = load_prefix(adapter, loaded.model)  # type: ignore[assignment]
        loaded.checkpoint_note = ", ".join(filter(None, [loaded.checkpoint_note, f"p-tuning {Path(adapter).name}"]))
    elif adapter:
        from kb_qa.llm.adapters import apply_adapter

        if loaded.quantization != "none":
            raise ModelLoadError(f"llm.adapter needs full-precision weights, the model is {loaded.quantization}; "
                                 "merge it first: python -m kb_qa.llm.convert SRC DST --merge-adapter ADAPTER")
        apply_adapter(loaded.model, adapter)
        loaded.checkpoint_note = ", ".join(filter(None, [loaded.checkpoint_note, f"adapter {Path(adapter).name}"]))
    return loaded


def _is_ptuning(adapter) -> bool:
    from kb_qa.llm.prefix import is_ptuning_folder

    return is_ptuning_folder(Path(adapter).expanduser())


def _load(model_path, *, device: str, dtype: str, quantization: str, max_context_tokens: int, free_memory,
          prequantized: str) -> LoadedModel:
    free_memory = free_memory or free_memory_bytes
    folder = resolve_checkpoint_path(model_path)
    if folder is None:
        raise ModelLoadError(f"{model_path}: not a folder, and not a repo id in the local Hugging Face cache")
    raw = read_config(folder)
    if not (folder / TOKENIZER_FILE).is_file():
        raise ModelLoadError(f"{folder}: no {TOKENIZER_FILE} (ChatGLM2's sentencepiece model)")
    tokenizer = ChatGLM2Tokenizer.from_folder(folder)

    target = pick_device(device)
    torch_dtype = pick_dtype(dtype, target)
    if is_chatglm2_config(raw) and raw.get("quantization_bit"):
        from kb_qa.llm.quantized import load_prequantized

        return load_prequantized(folder, parse_chatglm2_config(raw), tokenizer, device=target, dtype=torch_dtype,
                                  quantization=quantization, mode=prequantized, context_tokens=max_context_tokens,
                                  free_memory=free_memory)
    if quantization != "none":
        return _load_quantized(folder, raw, tokenizer, device=target, device_setting=device, dtype=torch_dtype,
                               quantization=quantization, context_tokens=max_context_tokens, free_memory=free_memory)
    if is_chatglm2_config(raw):
        cfg = parse_chatglm2_config(raw)
        glm_config = to_glm_config(cfg)
        _check_tokenizer(tokenizer, glm_config.vocab_size, folder)
        model = _empty_model(glm_config, torch_dtype)
        device_map = _plan_devices(model, glm_config, device=target, device_setting=device, dtype=torch_dtype,
                                   quantization="none", context_tokens=max_context_tokens, free_memory=free_memory)
        _stream_weights(model, folder, cfg, torch_dtype, target, device_map)
    elif raw.get("model_type") == "glm":
        model, device_map = _load_converted(folder, raw, device=target, device_setting=device, dtype=torch_dtype,
                                            context_tokens=max_context_tokens, free_memory=free_memory)
        _check_tokenizer(tokenizer, model.config.vocab_size, folder)
    else:
        raise ModelLoadError(
            f"{folder}: model_type {raw.get('model_type')!r} is neither ChatGLM2's 'chatglm' nor a converted 'glm'"
        )
    model.eval().requires_grad_(False)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    devices = sorted({str(p.device) for p in model.parameters()})
    return LoadedModel(model=model, tokenizer=tokenizer, device=model.model.embed_tokens.weight.device,
                       dtype=torch_dtype, quantization="none", source=folder,
                       num_parameters=glm_num_parameters(model.config), devices=devices)


def _check_tokenizer(tokenizer: ChatGLM2Tokenizer, vocab_size: int, folder: Path) -> None:
    if tokenizer.vocab_size > vocab_size:
        raise ModelLoadError(
            f"{folder}: {TOKENIZER_FILE} has {tokenizer.vocab_size} ids with the specials, more than the model's "
            f"vocabulary ({vocab_size}): not ChatGLM2's tokenizer"
        )


def _stream_weights(model, folder: Path, cfg: ChatGLM2Config, dtype: torch.dtype, device: torch.device,
                    device_map: dict | None) -> None:
    from kb_qa.llm.weights import iter_converted_tensors

    loaded: set[str] = set()
    for name, tensor in iter_converted_tensors(folder, cfg):
        where = _device_for(name, device_map, device)
        # One copy per tensor: cast (if needed) and move; the mmapped source page is then no longer referenced.
        _set_tensor(model, name, tensor.to(device=where, dtype=dtype, copy=False).contiguous())
        loaded.add(name)
    if cfg.tie_word_embeddings and "lm_head.weight" not in loaded:
        model.lm_head.weight = model.model.embed_tokens.weight
        loaded.add("lm_head.weight")
    missing = sorted(n for n, p in model.named_parameters() if p.is_meta)
    if missing:
        raise ModelLoadError(f"{folder}: checkpoint lacks {len(missing)} weights, e.g. {', '.join(missing[:3])}")
    if device_map:
        from accelerate import dispatch_model

        dispatch_model(model, device_map=device_map)
    else:
        for buffer_owner in model.modules():
            for key, buffer in list(buffer_owner._buffers.items()):
                if buffer is not None:
                    buffer_owner._buffers[key] = buffer.to(device)


def _load_converted(folder: Path, raw: dict, *, device: torch.device, device_setting: str, dtype: torch.dtype,
                    context_tokens: int, free_memory, quantization_config=None, quantization: str = "none"):
    from transformers import GlmConfig, GlmForCausalLM

    glm_config = GlmConfig.from_pretrained(folder)
    plan = _plan_devices(None, glm_config, device=device, device_setting=device_setting, dtype=dtype,
                         quantization=quantization, context_tokens=context_tokens, free_memory=free_memory)
    kwargs: dict = {"dtype": dtype, "use_safetensors": True}
    if plan is None:
        kwargs["device_map"] = {"": device.index if device.type == "cuda" else str(device)}
    else:
        kwargs["device_map"] = "auto"
        kwargs["max_memory"] = {i: int(f * 0.9) for i, f in plan["__spread__"].items()}
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    model = GlmForCausalLM.from_pretrained(folder, **kwargs)
    return model, plan


def converted_cache_dir(folder: Path) -> Path:
    """Where an original-format checkpoint is converted once for bitsandbytes loading (KB_QA_CACHE overrides)."""
    from kb_qa.llm.weights import find_weight_files

    root = Path(os.environ.get("KB_QA_CACHE", Path.home() / ".cache" / "kb_qa")).expanduser()
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    for path in find_weight_files(folder):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    return root / "converted" / f"{folder.name}-{digest.hexdigest()[:12]}"


def _load_quantized(folder: Path, raw: dict, tokenizer: ChatGLM2Tokenizer, *, device: torch.device,
                    device_setting: str, dtype: torch.dtype, quantization: str, context_tokens: int,
                    free_memory) -> LoadedModel:
    if quantization not in ("int8", "int4"):
        raise ModelLoadError(f"llm.quantization={quantization!r}: expected 'none', 'int8' or 'int4'")
    if device.type != "cuda":
        raise ModelLoadError(f"llm.quantization={quantization} needs a CUDA GPU (bitsandbytes); the device is {device}")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ModelLoadError(
            f"llm.quantization={quantization} needs the bitsandbytes package: pip install bitsandbytes"
        ) from None
    from transformers import BitsAndBytesConfig

    if is_chatglm2_config(raw):
        parse_chatglm2_config(raw)  # refuse unsupported flags before any work
        converted = converted_cache_dir(folder)
        if not (converted / "config.json").is_file():
            from kb_qa.llm.convert import convert_checkpoint

            log.warning("converting %s once to %s for %s loading (about the checkpoint's size on disk)",
                        folder, converted, quantization)
            convert_checkpoint(folder, converted)
        source = converted
    else:
        source = folder
    if quantization == "int8":
        qconfig = BitsAndBytesConfig(load_in_8bit=True)
    else:
        qconfig = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                     bnb_4bit_compute_dtype=dtype)
    model, _plan = _load_converted(source, read_config(source), device=device, device_setting=device_setting,
                                   dtype=dtype, context_tokens=context_tokens, free_memory=free_memory,
                                   quantization_config=qconfig, quantization=quantization)
    _check_tokenizer(tokenizer, model.config.vocab_size, folder)
    model.eval().requires_grad_(False)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    devices = sorted({str(p.device) for p in model.parameters()})
    return LoadedModel(model=model, tokenizer=tokenizer, device=model.model.embed_tokens.weight.device, dtype=dtype,
                       quantization=quantization, source=folder, num_parameters=glm_num_parameters(model.config),
                       devices=devices)
