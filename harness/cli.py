"""Command line: argument parsing and dispatch only; every subcommand is a thin call."""

from __future__ import annotations

import argparse
import json
import sys

from harness.errors import HarnessError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        raise HarnessError(f"{self.prog}: {message}")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint directory, hub id, 'default' or 'default-base'")
    p.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    p.add_argument("--dtype", default="fp32", help="fp32 | fp16 | bf16 (default fp32)")
    p.add_argument(
        "--adaptive-tokens",
        default=None,
        metavar="ID[,ID...]",
        help="adaptive token id per offset, e.g. 32011,32011,32011 or 32011*5 (overrides the checkpoint)",
    )


def _add_decoding_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k", type=int, default=5, help="draft length: adaptive tokens per loop (sdsat), 0 = plain AR")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--accept", default="exact", help="sampling acceptance rule: exact (default) | paper")
    p.add_argument("--tree", default=None, help="draft tree for sampling: default | chain | JSON list of paths")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=256)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sdsat-bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("decode", help="generate from one prompt and print the completion and its statistics")
    _add_model_args(p)
    _add_decoding_args(p)
    p.add_argument("--decoder", default="sdsat", help="ar | sdsat | hf | hf-pld")
    p.add_argument("--prompt", required=True)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument(
        "--warmup", type=int, default=None, help="unmeasured generations first (default: 1 on cuda, 0 on cpu)"
    )
    p.add_argument("--json", action="store_true", help="print only one JSON object")
    p.set_defaults(func=_cmd_decode)

    p = sub.add_parser("tiny-model", help="write a small random Llama with adaptive tokens (for smoke tests)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_tiny_model)
    return parser


def _cmd_decode(args) -> int:
    from harness.decoding import SamplingParams, StopCondition, make_decoder
    from harness.models import encode_prompt, load_model

    if not args.prompt:
        raise HarnessError("empty prompt: --prompt needs some text")
    lm = load_model(args.model, args.device, args.dtype, args.adaptive_tokens)
    decoder = make_decoder(args.decoder, lm, k=args.k, accept=args.accept, tree=args.tree)
    sampling = SamplingParams(args.temperature, args.top_p, args.top_k, args.seed)
    stop = StopCondition(args.max_new_tokens, tuple(args.stop), lm.eos_token_ids)
    prompt_ids = encode_prompt(lm.tokenizer, args.prompt)
    warmup = args.warmup if args.warmup is not None else (1 if lm.device.type == "cuda" else 0)
    for _ in range(warmup):
        decoder.generate(prompt_ids, stop, sampling)
    gen = decoder.generate(prompt_ids, stop, sampling)
    record = {"decoder": decoder.name, "k": args.k, "stop_reason": gen.stop_reason, **gen.stats.to_dict(per_loop=False)}
    if args.json:
        print(json.dumps({"completion": gen.text, **record}))
    else:
        print(gen.text)
        print(json.dumps(record))
    return 0


def _cmd_tiny_model(args) -> int:
    from harness.training.checkpoint import adaptive_spec_for, llama_config, random_model, save_checkpoint
    from harness.training.tokenizer import char_tokenizer

    tokenizer = char_tokenizer(
        "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\n\t()[]{}:=+-*/_,.'\"#<>!%0123456789"
    )
    config = llama_config(len(tokenizer), hidden=64, layers=2, heads=4, intermediate=128, tokenizer=tokenizer)
    model = random_model(config, seed=args.seed)
    out = save_checkpoint(model, tokenizer, args.out, adaptive_spec_for(tokenizer, 16))
    print(out)
    return 0


def _quiet_libraries() -> None:
    """Keep stderr for our own one-line messages: no weight-loading progress bars or advisory logs."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except HarnessError as exc:
        print(f"sdsat-bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sdsat-bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
