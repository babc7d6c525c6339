"""`python -m kb_qa.llm.convert SRC DST`: a ChatGLM2 checkpoint -> a folder that plain transformers (and vLLM) load
with no remote code: `model-0000X-of-0000N.safetensors` + index, config.json (model_type "glm"),
generation_config.json, tokenizer.model, and a fast-tokenizer `tokenizer.json` + `tokenizer_config.json` whose chat
template writes ChatGLM2's `[Round i]` format.

The weights stream shard by shard (peak memory about one output shard). In the fast tokenizer the specials are named
[MASK] [gMASK] [sMASK] <sop> <eop> so they never match inside words ("isopropyl"); kb_qa itself keeps using the
sentencepiece tokenizer (tokenizer.py), which never parses specials out of text.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from kb_qa.llm.config import parse_chatglm2_config, read_config, to_glm_config
from kb_qa.llm.tokenizer import TOKENIZER_FILE, ChatGLM2Tokenizer

log = logging.getLogger(__name__)

FAST_SPECIAL_NAMES = ("[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>")
CHAT_TEMPLATE = (
    "[gMASK]<sop>"
    "{% set ns = namespace(round=0) %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{% set ns.round = ns.round + 1 %}"
    "[Round {{ ns.round }}]\n\n问：{{ message['content'] }}\n\n答："
    "{% elif message['role'] == 'assistant' %}{{ message['content'] }}\n\n"
    "{% endif %}{% endfor %}"
)
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, *, dtype: str | None = None,
                       max_shard_bytes: int = 2 * 1024**3, fast_tokenizer: bool = True,
                       adapter: str | os.PathLike | None = None) -> Path:
    """Write the converted folder; returns DST. `dtype` None keeps the checkpoint's (fp16 for chatglm2-6b).
    `adapter`: a PEFT LoRA folder merged into the written weights (adapters.py)."""
    from safetensors.torch import save_file

    from kb_qa.llm.weights import iter_converted_tensors

    src, dst = Path(src), Path(dst)
    raw = read_config(src)
    cfg = parse_chatglm2_config(raw)
    tokenizer = ChatGLM2Tokenizer.from_folder(src)
    if tokenizer.vocab_size > cfg.padded_vocab_size:
        raise ValueError(f"{src}: tokenizer has {tokenizer.vocab_size} ids, more than padded_vocab_size")
    target_dtype = _DTYPES[dtype] if dtype else None
    deltas = {}
    if adapter:
        from kb_qa.llm.adapters import native_deltas

        deltas = native_deltas(adapter, cfg)

    dst.mkdir(parents=True, exist_ok=True)
    tmp = dst / ".converting"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    shard: dict[str, torch.Tensor] = {}
    shard_files: list[tuple[str, list[str]]] = []  # (file name, tensor names in it)
    shard_bytes, weight_map, total = 0, {}, 0

    def flush() -> None:
        nonlocal shard, shard_bytes
        if not shard:
            return
        name = f"part-{len(shard_files):05d}.safetensors"
        save_file(shard, str(tmp / name), metadata={"format": "pt"})
        shard_files.append((name, list(shard)))
        shard, shard_bytes = {}, 0

    for name, tensor in iter_converted_tensors(src, cfg):
        # clone: q/k/v are views of one source tensor, and safetensors refuses shared storage
        if name in deltas:  # sum in fp32, one rounding to the stored dtype
            tensor = (tensor.float() + deltas.pop(name)).to(tensor.dtype)
        tensor = tensor.to(dtype=target_dtype or tensor.dtype).contiguous().clone()
        size = tensor.numel() * tensor.element_size()
        if shard and shard_bytes + size > max_shard_bytes:
            flush()
        shard[name] = tensor
        shard_bytes += size
        total += size
    flush()
    if deltas:
        raise ValueError(f"{adapter}: adapter targets weights the checkpoint lacks: {', '.join(sorted(deltas)[:3])}")

    count = len(shard_files)
    for i, (part, names) in enumerate(shard_files, start=1):
        final = f"model-{i:05d}-of-{count:05d}.safetensors"
        os.replace(tmp / part, dst / final)
        weight_map.update({n: final for n in names})
    tmp.rmdir()
    for stale in dst.glob("model-*-of-*.safetensors"):
        if stale.name not in set(weight_map.values()):
            stale.unlink()
    with open(dst / "model.safetensors.index.json", "w", encoding="utf-8") as handle:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, handle, indent=2)

    glm_config = to_glm_config(cfg)
    glm_config.architectures = ["GlmForCausalLM"]
    stored = target_dtype or _DTYPES.get(str(raw.get("torch_dtype")), torch.float16)
    glm_config.dtype = stored
    glm_config.save_pretrained(dst)
    _write_generation_config(dst, tokenizer)
    shutil.copyfile(src / TOKENIZER_FILE, dst / TOKENIZER_FILE)
    if fast_tokenizer:
        write_fast_tokenizer(dst / TOKENIZER_FILE, dst)
    log.info("wrote %s: %d shard(s), %.2f GiB", dst, count, total / 1024**3)
    return dst


def _write_generation_config(dst: Path, tokenizer: ChatGLM2Tokenizer) -> None:
    from transformers import GenerationConfig

    # The original chat(): sampling, top_p 0.8, temperature 0.8, 8192 tokens of prompt + answer.
    GenerationConfig(do_sample=True, top_p=0.8, temperature=0.8, max_length=8192,
                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id).save_pretrained(dst)


def _bpe_merges(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """Every (left, right) whose concatenation is a piece, ranked by that piece's score (sentencepiece BPE merges
    the highest-scoring adjacent pair first)."""
    merges = []
    for piece, score in scores.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                merges.append((-score, vocab[left], vocab[right], left, right))
    merges.sort()
    return [(left, right) for *_, left, right in merges]


def build_fast_tokenizer(model_file: str | Path):
    """A `tokenizers.Tokenizer` reproducing ChatGLM2's sentencepiece ids, with the specials appended after the pieces
    and a post-processor adding [gMASK] <sop>."""
    from sentencepiece import sentencepiece_model_pb2 as generated_pb2
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE, Model, Unigram

    # generated protobuf module: its message classes are built at import time, so mypy cannot see them
    sentencepiece_model_pb2: Any = generated_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(model_file).read_bytes())
    pieces = proto.pieces
    byte_fallback = proto.trainer_spec.byte_fallback
    unk_piece = pieces[proto.trainer_spec.unk_id].piece
    if proto.trainer_spec.model_type == sentencepiece_model_pb2.TrainerSpec.BPE:
        vocab = {p.piece: i for i, p in enumerate(pieces)}
        normal = sentencepiece_model_pb2.ModelProto.SentencePiece.NORMAL
        mergeable = {p.piece: p.score for p in pieces if p.type == normal}
        model: Model = BPE(vocab=vocab, merges=_bpe_merges(vocab, mergeable), unk_token=unk_piece, fuse_unk=True,
                    byte_fallback=byte_fallback)
    elif proto.trainer_spec.model_type == sentencepiece_model_pb2.TrainerSpec.UNIGRAM:
        model = Unigram([(p.piece, p.score) for p in pieces], unk_id=proto.trainer_spec.unk_id,
                        byte_fallback=byte_fallback)
    else:
        raise ValueError(f"{model_file}: sentencepiece model type {proto.trainer_spec.model_type} not supported")
    tok = Tokenizer(model)

    spec = proto.normalizer_spec
    steps: list[normalizers.Normalizer] = []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:
        steps += [normalizers.Strip(left=True, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    steps.append(normalizers.Replace(" ", "▁"))
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = None
    decode_steps: list[decoders.Decoder] = [decoders.Replace("▁", " ")]
    if byte_fallback:
        decode_steps.append(decoders.ByteFallback())
    decode_steps.append(decoders.Fuse())
    if spec.add_dummy_prefix:
        decode_steps.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(decode_steps)

    user_defined = [p.piece for p in pieces if p.type == sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED]
    if user_defined:
        tok.add_tokens([AddedToken(p, normalized=False, special=False) for p in user_defined])
    n = len(pieces)
    specials = [AddedToken(name, special=True, normalized=False) for name in FAST_SPECIAL_NAMES]
    tok.add_special_tokens([AddedToken(pieces[i].piece, special=True, normalized=False) for i in (0, 1, 2)])
    tok.add_special_tokens(specials)
    for i, name in enumerate(FAST_SPECIAL_NAMES):
        if tok.token_to_id(name) != n + i:
            raise RuntimeError(f"special {name} got id {tok.token_to_id(name)}, expected {n + i}")
    gmask, sop = FAST_SPECIAL_NAMES[1], FAST_SPECIAL_NAMES[3]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{gmask} {sop} $A", pair=f"{gmask} {sop} $A $B",
        special_tokens=[(gmask, n + 1), (sop, n + 3)],
    )
    return tok


def write_fast_tokenizer(model_file: Path, dst: Path) -> None:
    tok = build_fast_tokenizer(model_file)
    tok.save(str(dst / "tokenizer.json"))
    proto_tok = ChatGLM2Tokenizer(model_file)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "padding_side": "left",
        "clean_up_tokenization_spaces": False,
        "unk_token": proto_tok.sp.id_to_piece(proto_tok.pad_token_id),
        "pad_token": proto_tok.sp.id_to_piece(proto_tok.pad_token_id),
        "eos_token": proto_tok.sp.id_to_piece(proto_tok.eos_token_id),
        "model_max_length": 8192,
        "chat_template": CHAT_TEMPLATE,
        "additional_special_tokens": list(FAST_SPECIAL_NAMES),  # ChatGLM2's [MASK] [gMASK] [sMASK] sop eop
    }
    with open(dst / "tokenizer_config.json", "w", encoding="utf-8") as handle:
        json.dump(config, handle, ensure_ascii=False, indent=2)
    with open(dst / "special_tokens_map.json", "w", encoding="utf-8") as handle:
        json.dump({k: config[k] for k in ("unk_token", "pad_token", "eos_token", "additional_special_tokens")},
                  handle, ensure_ascii=False, indent=2)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kb_qa.llm.convert",
        description="Convert a ChatGLM2-6B checkpoint (THUDM/chatglm2-6b, -32k, CodeGeeX2) to transformers' native "
        "GLM format: safetensors + config.json (model_type glm) + tokenizer files, loadable with no remote code.",
        epilog="examples:\n"
        "  python -m kb_qa.llm.convert ~/models/chatglm2-6b ~/models/chatglm2-6b-glm\n"
        "  python -m kb_qa.llm.convert ~/models/chatglm2-6b /data/glm --dtype bfloat16 --shard-gb 5\n"
        "  python -m kb_qa.llm.convert ~/models/chatglm2-6b ~/models/merged --merge-adapter ~/lora/checkpoint-1000\n"
        "  python -m kb_qa.llm.convert ~/models/chatglm2-6b-int4 ~/models/chatglm2-gguf --gguf q4_0\n"
        "then: vllm serve ~/models/chatglm2-6b-glm   or   GlmForCausalLM.from_pretrained(DST)\n"
        "      or llm.backend=llamacpp with llm.model_path=~/models/chatglm2-gguf",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("src", help="ChatGLM2 checkpoint folder (config.json, tokenizer.model, pytorch_model*.bin)")
    parser.add_argument("dst", help="output folder (created)")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), help="store weights in this dtype (default: as in SRC)")
    parser.add_argument("--shard-gb", type=float, default=2.0, help="largest output shard in GiB (default 2)")
    parser.add_argument("--no-fast-tokenizer", action="store_true", help="copy tokenizer.model only")
    parser.add_argument("--gguf", choices=("f16", "q8_0", "q4_0"),
                        help="write DST/chatglm2-<type>.gguf for llm.backend=llamacpp instead of a transformers folder")
    parser.add_argument("--merge-adapter", metavar="ADAPTER", help="PEFT LoRA adapter folder to merge into the weights")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from kb_qa.llm.config import UnsupportedCheckpointError

    if args.gguf and args.merge_adapter:
        print("error: --merge-adapter and --gguf: merge into a folder first, then run --gguf on it", file=sys.stderr)
        return 2
    try:
        if args.gguf:
            from kb_qa.llm.gguf_export import write_gguf

            print(write_gguf(args.src, args.dst, args.gguf))
            return 0
        dst = convert_checkpoint(args.src, args.dst, dtype=args.dtype, max_shard_bytes=int(args.shard_gb * 1024**3),
                                 fast_tokenizer=not args.no_fast_tokenizer, adapter=args.merge_adapter)
    except (UnsupportedCheckpointError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(dst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
