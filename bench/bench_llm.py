"""Generation speed of kb_qa's ChatGLM2 path next to plain `model.generate`, in one run.

CPU (always unless --gpu-only): the tiny random ChatGLM2 of the tests (tests/tiny_chatglm2.py), converted through
kb_qa's loader: time to first token and decode tokens/s. A smoke figure: the tiny model measures Python overhead.

GPU (when CUDA is present, unless --cpu-only): a random-initialised full-size ChatGLM2-6B (weights do not change
speed) built as GlmForCausalLM directly on the GPU in bf16 (no weights file), batch 1:
  - decode tokens/s with a 2K-token context, time to first token for 2K and 8K prompts, peak GPU memory;
  - configurations: plain eager `model.generate` (dynamic cache), kb_qa's path with its static cache (no compile),
    and with the static cache + torch.compile (transformers compiles the decode step, mode reduce-overhead =
    CUDA graphs); attention implementation from --attn (sdpa by default);
  - int8 / int4 (bitsandbytes) with --quant when bitsandbytes is installed (saves the random model to a temp
    folder once, then loads it quantized through transformers).
Bandwidth bound for batch-1 bf16 decode on an H200: ~402 tokens/s (11.95 GB read per token at 4.8 TB/s).

    python bench/bench_llm.py                 # CPU smoke figures (+ GPU when present)
    python bench/bench_llm.py --gpu-only --new-tokens 256 --quant
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from transformers.generation.streamers import BaseStreamer  # noqa: E402

from kb_qa.llm.generation import ChatGLM2Generator, SamplingParams  # noqa: E402
from kb_qa.llm.loader import _default_dtype  # noqa: E402

CHATGLM2_6B = {"model_type": "chatglm", "hidden_size": 4096, "num_layers": 28, "num_attention_heads": 32,
               "kv_channels": 128, "multi_query_attention": True, "multi_query_group_num": 2, "ffn_hidden_size": 13696,
               "padded_vocab_size": 65024, "seq_length": 32768, "layernorm_epsilon": 1e-5, "add_qkv_bias": True}
H200_BOUND_TOKENS_S = 402


class TimingStreamer(BaseStreamer):
    """Timestamps of each new token (the prompt's put is skipped); a token counts when it reaches the host."""

    def __init__(self, sync: bool):
        self.start = 0.0
        self.times: list[float] = []
        self._prompt_seen = False
        self.sync = sync

    def put(self, value):
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self):
        pass

    def figures(self) -> dict:
        ttft = self.times[0] - self.start
        decode = (len(self.times) - 1) / (self.times[-1] - self.times[0]) if len(self.times) > 1 else float("nan")
        return {"ttft_ms": ttft * 1e3, "decode_tok_s": decode, "tokens": len(self.times)}


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_plain(model, input_ids, new_tokens: int) -> dict:
    """Plain eager `model.generate`: greedy, dynamic cache, no processors of ours, eos ignored."""
    streamer = TimingStreamer(sync=False)
    _sync()
    streamer.start = time.perf_counter()
    with torch.inference_mode():
        model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, streamer=streamer, pad_token_id=0,
                       eos_token_id=None, disable_compile=True)
    return streamer.figures()


def run_kb_qa(generator: ChatGLM2Generator, input_ids, new_tokens: int) -> dict:
    """kb_qa's generation settings (processors, cache, compile choice) on kb_qa's worker thread, eos ignored."""
    import threading

    streamer = TimingStreamer(sync=False)
    params = SamplingParams(max_new_tokens=new_tokens, temperature=0)
    kwargs = generator._generation_kwargs(input_ids, torch.ones_like(input_ids), params, threading.Event(), streamer)
    kwargs["generation_config"].eos_token_id = None
    kwargs["generation_config"].min_new_tokens = new_tokens
    _sync()
    streamer.start = time.perf_counter()
    generator._worker.submit(generator._run_generate, kwargs).result()
    return streamer.figures()


def best_of(fn, repeats: int) -> dict:
    runs = [fn() for _ in range(repeats)]
    return {"ttft_ms": min(r["ttft_ms"] for r in runs), "decode_tok_s": max(r["decode_tok_s"] for r in runs),
            "tokens": runs[0]["tokens"], "ttft_ms_median": statistics.median(r["ttft_ms"] for r in runs)}


def _row(name: str, figures: dict, extra: str = "") -> str:
    return (f"  {name:<38} TTFT {figures['ttft_ms']:9.1f} ms   decode {figures['decode_tok_s']:8.1f} tok/s"
            f"   ({figures['tokens']} tokens){extra}")


# -- CPU ---------------------------------------------------------------------------------------------------------------
def bench_cpu(args) -> dict:
    from tiny_chatglm2 import build_tiny_chatglm2

    from kb_qa.llm.loader import load_chatglm2
    from kb_qa.llm.tokenizer import build_chat_prompt

    torch.set_num_threads(args.cpu_threads)  # the tiny model's ops are too small to gain from more threads
    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_chatglm2(build_tiny_chatglm2(Path(tmp) / "tiny"), device="cpu", dtype="float32")
    generator = ChatGLM2Generator(loaded.model, loaded.tokenizer, params=SamplingParams(temperature=0),
                                  max_context_tokens=2048)
    prompt = build_chat_prompt("你好，请介绍一下知识库问答系统。", [("hello", "Hi! 我是 ChatGLM2。")] * 4)
    ids = torch.tensor([loaded.tokenizer.encode(prompt)])
    n = args.cpu_new_tokens
    run_plain(loaded.model, ids, 4)  # warm-up
    run_kb_qa(generator, ids, 4)
    plain = best_of(lambda: run_plain(loaded.model, ids, n), args.repeats)
    ours = best_of(lambda: run_kb_qa(generator, ids, n), args.repeats)

    # The product path end to end: text pieces out of generator.stream (decoding, post-processing, threads).
    def stream_text():
        start = time.perf_counter()
        first = None
        for _ in generator.stream(prompt, max_new_tokens=n):
            first = first or time.perf_counter()
        end = time.perf_counter()
        return {"ttft_ms": (first - start) * 1e3, "total_ms": (end - start) * 1e3}

    streams = [stream_text() for _ in range(args.repeats)]
    text = {"ttft_ms": min(s["ttft_ms"] for s in streams), "total_ms": min(s["total_ms"] for s in streams)}
    print(f"\nCPU: tiny ChatGLM2 ({loaded.num_parameters:,} parameters, fp32, {torch.get_num_threads()} threads), "
          f"prompt {ids.shape[1]} tokens, {n} new tokens, best of {args.repeats}")
    print(_row("plain model.generate (eager)", plain))
    print(_row("kb_qa generation settings", ours))
    print(f"  {'kb_qa stream() text pieces':<38} TTFT {text['ttft_ms']:9.1f} ms   "
          f"whole answer {text['total_ms']:.0f} ms")
    return {"device": "cpu", "prompt_tokens": ids.shape[1], "plain": plain, "kb_qa": ours, "kb_qa_stream_text": text}


# -- GPU ---------------------------------------------------------------------------------------------------------------
def build_full_size(attn: str):
    from transformers import GlmForCausalLM

    from kb_qa.llm.config import parse_chatglm2_config, to_glm_config

    config = to_glm_config(parse_chatglm2_config(CHATGLM2_6B))
    config._attn_implementation = attn
    torch.manual_seed(0)
    with _default_dtype(torch.bfloat16), torch.device("cuda"):
        model = GlmForCausalLM(config)
    return model.eval().requires_grad_(False)


class _IdsTokenizer:
    """Just what ChatGLM2Generator needs when prompts are already token ids (the bench never decodes text)."""

    eos_token_id, pad_token_id = 2, 0

    def decode(self, ids):
        return ""


def bench_gpu(args) -> dict:
    results: dict = {"device": torch.cuda.get_device_name(0), "attn": args.attn, "new_tokens": args.new_tokens}
    model = build_full_size(args.attn)
    params = sum(p.numel() for p in model.parameters())
    weights_gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9
    print(f"\nGPU: {results['device']}, random ChatGLM2-6B ({params:,} parameters, bf16, {weights_gb:.2f} GB), "
          f"attn={args.attn}, batch 1")
    g = torch.Generator(device="cuda").manual_seed(0)
    prompts = {n: torch.randint(100, 60000, (1, n), device="cuda", generator=g) for n in (2048, 8192)}
    window = 8192 + args.new_tokens  # kb_qa's window for this bench: room for the 8K prompt plus the answer

    def measure(name, fn):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        fn(prompts[2048], 8)  # warm-up (and compilation, when compiling)
        fn(prompts[8192], 1)
        decode = best_of(lambda: fn(prompts[2048], args.new_tokens), args.repeats)
        ttft_8k = best_of(lambda: fn(prompts[8192], 1), args.repeats)
        peak = torch.cuda.max_memory_allocated() / 2**30
        row = {"decode_tok_s_2k": decode["decode_tok_s"], "ttft_ms_2k": decode["ttft_ms"],
               "ttft_ms_8k": ttft_8k["ttft_ms"], "peak_gib": peak,
               "bound_fraction": decode["decode_tok_s"] / H200_BOUND_TOKENS_S}
        results[name] = row
        print(f"  {name:<34} decode@2K {row['decode_tok_s_2k']:7.1f} tok/s ({row['bound_fraction']:5.1%} of H200 "
              f"bound)  TTFT 2K {row['ttft_ms_2k']:7.1f} ms  8K {row['ttft_ms_8k']:7.1f} ms  peak {peak:6.1f} GiB")

    measure("plain model.generate (eager)", lambda ids, n: run_plain(model, ids, n))
    dynamic = ChatGLM2Generator(model, _IdsTokenizer(), max_context_tokens=window)
    measure("kb_qa default (dynamic cache)", lambda ids, n: run_kb_qa(dynamic, ids, n))
    static = ChatGLM2Generator(model, _IdsTokenizer(), max_context_tokens=window, static_cache=True, compile=False)
    measure("kb_qa static cache", lambda ids, n: run_kb_qa(static, ids, n))
    if not args.no_compile:
        compiled = ChatGLM2Generator(model, _IdsTokenizer(), max_context_tokens=window, static_cache=True,
                                     compile=True)
        start = time.perf_counter()
        run_kb_qa(compiled, prompts[2048], 4)
        results["compile_warmup_s"] = time.perf_counter() - start
        print(f"  (static cache + torch.compile: first call incl. compilation {results['compile_warmup_s']:.1f} s)")
        measure("kb_qa static cache + compile", lambda ids, n: run_kb_qa(compiled, ids, n))
        del compiled
    if args.quant:
        bench_quantized(model, args, prompts, window, results)
    return results


def bench_quantized(model, args, prompts, window, results) -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        print("  int8/int4: bitsandbytes not installed, skipped")
        return
    from transformers import BitsAndBytesConfig, GlmForCausalLM

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        model.save_pretrained(tmp)
        model.to("meta")  # free the bf16 copy
        torch.cuda.empty_cache()
        for name, qconfig in [
            ("int8 (bitsandbytes)", BitsAndBytesConfig(load_in_8bit=True)),
            ("int4 nf4 (bitsandbytes)", BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_use_double_quant=True,
                                                           bnb_4bit_compute_dtype=torch.bfloat16)),
        ]:
            quantized = GlmForCausalLM.from_pretrained(tmp, quantization_config=qconfig, device_map={"": 0},
                                                       dtype=torch.bfloat16).eval()
            generator = ChatGLM2Generator(quantized, _IdsTokenizer(), max_context_tokens=window)
            torch.cuda.reset_peak_memory_stats()
            run_kb_qa(generator, prompts[2048], 4)
            decode = best_of(lambda g=generator: run_kb_qa(g, prompts[2048], args.new_tokens), args.repeats)
            ttft_8k = best_of(lambda g=generator: run_kb_qa(g, prompts[8192], 1), args.repeats)
            peak = torch.cuda.max_memory_allocated() / 2**30
            results[name] = {"decode_tok_s_2k": decode["decode_tok_s"], "ttft_ms_2k": decode["ttft_ms"],
                             "ttft_ms_8k": ttft_8k["ttft_ms"], "peak_gib": peak}
            print(f"  {name:<34} decode@2K {decode['decode_tok_s']:7.1f} tok/s  TTFT 2K {decode['ttft_ms']:7.1f} ms"
                  f"  8K {ttft_8k['ttft_ms']:7.1f} ms  peak {peak:6.1f} GiB")
            del quantized, generator
            torch.cuda.empty_cache()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-only", action="store_true")
    parser.add_argument("--gpu-only", action="store_true")
    parser.add_argument("--new-tokens", type=int, default=256, help="decode length on GPU (default 256)")
    parser.add_argument("--cpu-new-tokens", type=int, default=64, help="decode length on CPU (default 64)")
    parser.add_argument("--cpu-threads", type=int, default=1, help="torch threads for the CPU figures (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure; the best is reported")
    parser.add_argument("--attn", default="sdpa", help="attention implementation: sdpa, eager, flash_attention_2")
    parser.add_argument("--no-compile", action="store_true", help="skip the static cache + torch.compile run")
    parser.add_argument("--quant", action="store_true", help="also int8/int4 with bitsandbytes (GPU)")
    parser.add_argument("--tmp", default=None, help="folder for the temporary model copy of --quant")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    out = {"torch": torch.__version__}
    if not args.gpu_only:
        out["cpu"] = bench_cpu(args)
    if not args.cpu_only:
        if torch.cuda.is_available():
            out["gpu"] = bench_gpu(args)
        else:
            print("\nGPU: no CUDA device here; GPU figures skipped")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
