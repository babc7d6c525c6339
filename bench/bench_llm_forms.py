"""ChatGLM2 in the forms users run, on this CPU: load time, resident memory and greedy decode tokens/s for
transformers fp32, the official int4 checkpoint format (dequantized, and packed as on GPUs), and llama.cpp GGUF
F16 / Q8_0 / Q4_0 (when llama-cpp-python is installed). Plus the memory each form needs for the real 6B model,
computed from its tensor sizes (no weights needed).

Each form runs in its own subprocess, so load time and peak RSS are its own. Models are random ChatGLM2-format
checkpoints built like the tests' (tests/tiny_chatglm2.py): `--size tiny` (hidden 64, 2 layers: measures overhead)
or `--size small` (hidden 1024, 8 layers, ffn 2816, ~0.1B parameters: enough arithmetic to compare kernels).

    python bench/bench_llm_forms.py --size small --new-tokens 64
    python bench/bench_llm_forms.py --memory-only
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

SIZES = {"tiny": {}, "small": {"hidden_size": 1024, "num_layers": 8, "ffn_hidden_size": 2816,
                               "num_attention_heads": 16, "kv_channels": 64}}
FORMS = ("transformers-fp32", "int4-dequantized", "int4-packed", "int8-dequantized", "gguf-f16", "gguf-q8_0",
         "gguf-q4_0")
CHATGLM2_6B = {"hidden": 4096, "layers": 28, "heads": 32, "kv_heads": 2, "head_dim": 128, "ffn": 13696,
               "vocab": 65024}
PROMPT = "[Round 1]\n\n问：你好，请介绍一下知识库问答系统。\n\n答："


# -- 6B memory from tensor sizes --------------------------------------------------------------------------------------
def tensors_6b() -> list[tuple[str, tuple[int, ...]]]:
    c = CHATGLM2_6B
    qkv = (c["heads"] + 2 * c["kv_heads"]) * c["head_dim"]
    out = [("embedding", (c["vocab"], c["hidden"])), ("output_layer", (c["vocab"], c["hidden"])),
           ("final_norm", (c["hidden"],))]
    for _ in range(c["layers"]):
        out += [("qkv", (qkv, c["hidden"])), ("qkv_bias", (qkv,)), ("dense", (c["hidden"], c["heads"] * c["head_dim"])),
                ("h_to_4h", (2 * c["ffn"], c["hidden"])), ("4h_to_h", (c["hidden"], c["ffn"])),
                ("norm", (c["hidden"],)), ("norm", (c["hidden"],))]
    return out


def bytes_6b(form: str) -> int:
    """Weight bytes of chatglm2-6b in `form`. GGUF: 2-D tensors Q8_0 = 34 bytes / 32 weights, Q4_0 = 18 / 32, 1-D F32
    (as gguf_export writes them); official intN: the 4 linear kinds packed (N/8 bytes per weight) + an fp16 scale
    per row, everything else fp16."""
    total = 0
    for name, shape in tensors_6b():
        n = 1
        for d in shape:
            n *= d
        two_d = len(shape) == 2
        if form in ("fp32",):
            total += 4 * n
        elif form in ("fp16", "bf16", "gguf-f16"):
            total += (2 if two_d or form != "gguf-f16" else 4) * n
        elif form in ("gguf-q8_0", "gguf-q4_0"):
            total += (n // 32 * (34 if form == "gguf-q8_0" else 18)) if two_d else 4 * n
        elif form in ("int8-official", "int4-official"):
            bits = 8 if form == "int8-official" else 4
            if name in ("qkv", "dense", "h_to_4h", "4h_to_h"):
                total += n * bits // 8 + 2 * shape[0]
            else:
                total += 2 * n
    return total


def memory_table() -> list[dict]:
    kv_8k = 2 * CHATGLM2_6B["layers"] * CHATGLM2_6B["kv_heads"] * CHATGLM2_6B["head_dim"] * 2 * 8192  # fp16 K,V
    rows = []
    print(f"\nchatglm2-6b weights by form (from tensor sizes; + {kv_8k / 2**20:.0f} MiB fp16 KV cache at 8K tokens):")
    for form in ("fp32", "fp16", "int8-official", "int4-official", "gguf-f16", "gguf-q8_0", "gguf-q4_0"):
        b = bytes_6b(form)
        rows.append({"form": form, "weight_bytes": b, "with_8k_kv_bytes": b + kv_8k})
        print(f"  {form:<16} {b / 2**30:6.2f} GiB weights   {(b + kv_8k) / 2**30:6.2f} GiB with the 8K KV cache")
    return rows


# -- one form, in a subprocess ----------------------------------------------------------------------------------------
def _rss_mb() -> float:
    """Peak resident MiB of this process (VmHWM: per address space, so not inherited from the parent the way
    ru_maxrss is across fork + exec)."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(form: str, folder: Path, new_tokens: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from kb_qa.llm.tokenizer import ChatGLM2Tokenizer

    tokenizer = ChatGLM2Tokenizer.from_folder(folder / "fp32")
    ids = tokenizer.encode(PROMPT)
    if form.startswith("gguf-"):
        import llama_cpp  # noqa: F401  (imports are not load time)
    else:
        import transformers  # noqa: F401

        import kb_qa.llm.loader  # noqa: F401
    base_rss = _rss_mb()
    start = time.perf_counter()
    if form.startswith("gguf-"):
        from kb_qa.llm.llamacpp_backend import LlamaCppGenerator

        kind = form.removeprefix("gguf-")
        generator = LlamaCppGenerator(folder / kind / f"chatglm2-{kind}.gguf", tokenizer, max_context_tokens=1024,
                                      n_threads=threads)
        load_s = time.perf_counter() - start

        def run(n):
            return generator.generate_ids(ids, temperature=0, max_new_tokens=n)
    else:
        from kb_qa.llm.loader import load_chatglm2

        source = {"transformers-fp32": "fp32", "int4-dequantized": "int4", "int4-packed": "int4",
                  "int8-dequantized": "int8"}[form]
        loaded = load_chatglm2(folder / source, device="cpu", dtype="float32",
                               prequantized="packed" if form.endswith("packed") else "auto")
        load_s = time.perf_counter() - start
        model = loaded.model

        def run(n):
            with torch.inference_mode():
                out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=int),
                                     max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                     eos_token_id=None, pad_token_id=0)
            return out[0, len(ids):].tolist()
    run(4)  # warm-up
    best = None
    for _ in range(3):
        t = time.perf_counter()
        produced = len(run(new_tokens))
        elapsed = time.perf_counter() - t
        best = max(best or 0.0, produced / elapsed)
    return {"form": form, "load_s": load_s, "tokens_s": best, "peak_rss_mb": _rss_mb(),
            "rss_before_load_mb": base_rss, "tokens": new_tokens, "prompt_tokens": len(ids)}


def build_models(root: Path, size: str) -> int:
    import sentencepiece as spm
    import torch
    from test_llm_quantized_checkpoint import official_quantize
    from tiny_chatglm2 import build_tiny_chatglm2, random_state_dict, tiny_config, train_tiny_tokenizer

    from kb_qa.llm.gguf_export import write_gguf
    from kb_qa.llm.quantized import QUANTIZED_LINEARS

    proto = train_tiny_tokenizer()
    n = spm.SentencePieceProcessor(model_proto=proto).vocab_size()
    config = tiny_config(n, **SIZES[size])
    state = random_state_dict(config)
    build_tiny_chatglm2(root / "fp32", tokenizer_model=proto, state_dict=state, shards=1, **SIZES[size])
    for bits in (4, 8):
        packed = {}
        for name, tensor in state.items():
            if name.endswith(".weight") and name.removesuffix(".weight").endswith(QUANTIZED_LINEARS):
                packed[name], packed[name + "_scale"] = official_quantize(tensor, bits)
            else:
                packed[name] = tensor.half() if tensor.dim() == 2 else tensor  # as the official file: fp16
        build_tiny_chatglm2(root / f"int{bits}", tokenizer_model=proto, state_dict=packed, shards=1,
                            quantization_bit=bits, **SIZES[size])
    try:
        for kind in ("f16", "q8_0", "q4_0"):
            write_gguf(root / "fp32", root / kind, kind)
    except ImportError:
        pass
    return sum(t.numel() for t in state.values() if t.dtype == torch.float32)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-only", action="store_true")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--worker", nargs=2, metavar=("FORM", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], Path(args.worker[1]), args.new_tokens, args.threads)))
        return 0
    out = {"memory_6b": memory_table()}
    if not args.memory_only:
        from kb_qa.llm.llamacpp_backend import llama_cpp_available

        with tempfile.TemporaryDirectory() as tmp:
            params = build_models(Path(tmp), args.size)
            print(f"\n{args.size} random ChatGLM2 ({params:,} parameters), {args.threads} threads, greedy, "
                  f"{args.new_tokens} new tokens, best of 3; each form in its own process")
            rows = []
            for form in FORMS:
                if form.startswith("gguf-") and not llama_cpp_available():
                    print(f"  {form:<18} skipped: llama-cpp-python not installed")
                    continue
                done = subprocess.run([sys.executable, __file__, "--worker", form, tmp, "--new-tokens",
                                       str(args.new_tokens), "--threads", str(args.threads)],
                                      capture_output=True, text=True)
                if done.returncode:
                    print(f"  {form:<18} failed: {done.stderr.strip().splitlines()[-1:]}")
                    continue
                row = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(f"  {form:<18} load {row['load_s']:6.2f} s   decode {row['tokens_s']:8.1f} tok/s   "
                      f"peak RSS {row['peak_rss_mb']:7.0f} MiB (before load {row['rss_before_load_mb']:.0f})")
            out["forms"] = rows
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
