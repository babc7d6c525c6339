"""GPU check (never CI): the folder `python -m kb_qa.llm.convert` writes is what vLLM serves.

Builds a random ChatGLM2-format checkpoint like the tests' (tests/tiny_chatglm2.py; `--size small` is ~0.1B
parameters), converts it with kb_qa's own converter, then on the GPU:
  1. loads the converted folder in vLLM (`vllm.LLM`, GlmForCausalLM, the fast tokenizer.json the converter wrote)
     and in transformers' native GlmForCausalLM;
  2. checks the prompt ids vLLM's tokenizer gives equal kb_qa's ChatGLM2Tokenizer ids (sentencepiece);
  3. greedy-decodes the same ChatGLM2 prompts in both and prints how many leading tokens agree (random weights in
     float32: they should agree on all of them; bf16 may diverge late) and each engine's tokens/s.
Prints a table; exits 3 with the reason when there is no CUDA device or vLLM is not installed.

    python bench/gpu_vllm_check.py --size small --prompts 8 --new-tokens 64
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

SIZES = {"tiny": {}, "small": {"hidden_size": 1024, "num_layers": 8, "ffn_hidden_size": 2816,
                               "num_attention_heads": 16, "kv_channels": 64}}
QUESTIONS = ["你好", "介绍一下北京的历史。", "What is retrieval-augmented generation?", "写一首关于春天的诗",
             "Explain the difference between TCP and UDP.", "上海有哪些著名的景点？", "1+1等于几？",
             "Summarise the plot of Hamlet in two sentences."]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--prompts", type=int, default=len(QUESTIONS))
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = p.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("no CUDA device here: this check runs on a GPU machine (bench/, never CI)")
        return 3
    try:
        import vllm
    except ImportError:
        print("vLLM is not installed: pip install vllm (on the GPU machine), then rerun")
        return 3

    from tiny_chatglm2 import build_tiny_chatglm2
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from kb_qa.llm.convert import main as convert
    from kb_qa.llm.tokenizer import ChatGLM2Tokenizer, build_chat_prompt

    prompts = [build_chat_prompt(q) for q in (QUESTIONS * 4)[: args.prompts]]
    with tempfile.TemporaryDirectory(prefix="kbqa-vllm-") as tmp:
        src, dst = Path(tmp) / "chatglm2", Path(tmp) / "converted"
        build_tiny_chatglm2(src, shards=1, **SIZES[args.size])
        if convert([str(src), str(dst)]) != 0:
            print("kb_qa.llm.convert failed")
            return 1
        ours = ChatGLM2Tokenizer.from_folder(dst)
        fast = PreTrainedTokenizerFast(tokenizer_file=str(dst / "tokenizer.json"))
        expected_ids = [ours.encode(text) for text in prompts]
        ids_equal = sum(fast(text)["input_ids"] == ids for text, ids in zip(prompts, expected_ids, strict=True))

        dtype = getattr(torch, args.dtype)
        model = AutoModelForCausalLM.from_pretrained(dst, torch_dtype=dtype).to("cuda").eval()
        started = time.perf_counter()
        hf_out = []
        with torch.inference_mode():
            for ids in expected_ids:
                out = model.generate(torch.tensor([ids], device="cuda"), max_new_tokens=args.new_tokens,
                                     do_sample=False, min_new_tokens=args.new_tokens)
                hf_out.append(out[0, len(ids):].tolist())
        hf_s = time.perf_counter() - started
        del model
        torch.cuda.empty_cache()

        engine = vllm.LLM(model=str(dst), tokenizer=str(dst), dtype=args.dtype, gpu_memory_utilization=0.3,
                          enforce_eager=True)
        params = vllm.SamplingParams(temperature=0, max_tokens=args.new_tokens, min_tokens=args.new_tokens)
        started = time.perf_counter()
        results = engine.generate([{"prompt_token_ids": ids} for ids in expected_ids], params)
        vllm_s = time.perf_counter() - started
        vllm_out = [list(r.outputs[0].token_ids) for r in results]

    agree = []
    for a, b in zip(hf_out, vllm_out, strict=True):
        n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        agree.append(n)
    tokens = sum(len(o) for o in vllm_out)
    print(f"| check | value |\n|---|---|\n| checkpoint | {args.size}, random weights, {args.dtype} |")
    print(f"| prompt ids equal (fast tokenizer vs sentencepiece) | {ids_equal}/{len(prompts)} |")
    print(f"| greedy tokens agreeing, vLLM vs transformers | {sum(agree)}/{args.new_tokens * len(prompts)} "
          f"(min {min(agree)} of {args.new_tokens} in a prompt) |")
    print(f"| transformers, one prompt at a time | {tokens / hf_s:.0f} tok/s |")
    print(f"| vLLM, all prompts batched | {tokens / vllm_s:.0f} tok/s |")
    return 0 if ids_equal == len(prompts) else 1


if __name__ == "__main__":
    sys.exit(main())
