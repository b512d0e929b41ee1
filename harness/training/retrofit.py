"""Retrofit an existing causal LM with SDSAT (``sdsat-bench train --base MODEL``), stage by stage under
``--work``, each stage skipped when its output exists:

- ``corpus``: our decontaminated builder over ``--roots``, or ``--corpus`` documents;
- ``tokenizer``: the base's own tokenizer plus adaptive and FIM tokens where it lacks them
  (:mod:`harness.vocabulary`);
- ``tokens``: the corpus in that tokenizer; training documents plain or in FIM form, held-out ones
  plain, so that the base reads them too;
- ``sdsat``: the default recipe's SDSAT batches, mask and self-distilled adaptive targets, with the
  frozen base as the standard tokens' teacher (they keep the base's predictions); a full fine-tune
  (``W/sdsat/``: a checkpoint) or LoRA (``W/sdsat/``: an adapter that ``--model`` applies to its
  base, whose hash it records and checks);
- ``medusa``, ``eagle`` (only when named in ``--stages``): Medusa-1 heads or an EAGLE layer on the
  frozen base at the same budget, ``W/medusa/``, ``W/eagle/`` (a ``--drafter`` for that decoder on the
  base);
- ``evaluate``: held-out standard loss of base and SDSAT, draft accuracy per offset, greedy accept
  rate and tokens per forward pass per k on HumanEval prompts; ``W/eval.json`` and the model card
  ``W/sdsat/README.md``.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch

from harness import weights
from harness.errors import HarnessError
from harness.training import DRAFTERS
from harness.training.checkpoint import save_checkpoint
from harness.training.config import RecipeConfig
from harness.training.corpus import corpus_from_documents, read_corpus
from harness.training.data import encode_documents, fim_positions
from harness.training.evaluation import (
    PROGRESS,
    EvaluationProgress,
    acceptance_sweeps,
    heldout_metrics,
    write_evaluation,
)
from harness.training.stages import StageRunner
from harness.training.train import train
from harness.vocabulary import ADAPTIVE_INITS, Extension, adaptive_init, extend_tokenizer
from harness.weights import grow_vocabulary

STAGES = ("corpus", "tokenizer", "tokens", "sdsat", "evaluate")
EXTENSION = "extension.json"  # what the tokenizer stage added (harness.vocabulary.Extension)
SHARD = "200MB"


def run(cfg: RecipeConfig, stages: tuple[str, ...] = STAGES, log=print) -> None:
    """Check the base and the settings (one line each, before any heavy work), then run the stages."""
    source = check_settings(cfg)
    _Retrofit(cfg, stages, log, source).run()


def check_settings(cfg: RecipeConfig) -> weights.Source:
    """What can be refused without reading weights or data: returns the base's resolved source."""
    if not cfg.roots and not cfg.corpus:
        raise HarnessError("train --base needs --roots (source directories) or --corpus (JSON-lines documents)")
    for path in (*cfg.roots, *cfg.corpus):
        if not os.path.exists(path):
            raise HarnessError(f"not found: {path}")
    if cfg.lora_rank is not None and cfg.lora_rank < 1:
        raise HarnessError(f"--lora-rank must be at least 1, got {cfg.lora_rank}")
    if cfg.adaptive_init not in ADAPTIVE_INITS:
        raise HarnessError(f"--adaptive-init: expected one of {', '.join(ADAPTIVE_INITS)}, got '{cfg.adaptive_init}'")
    if cfg.max_k < 1:
        raise HarnessError(f"--max-k must be at least 1, got {cfg.max_k}")
    if cfg.lora_rank and _missing("peft"):
        raise HarnessError("--lora-rank trains a LoRA adapter, which needs peft: pip install peft")
    source = weights.resolve(cfg.base)
    if source.kind == "adapter":
        raise HarnessError(f"'{cfg.base}' is an SDSAT adapter; retrofit its base instead")
    config = weights.check_causal_lm(source)
    _check_positions(config)
    return source


def _check_positions(config) -> None:
    """Adaptive token A_j stands for the position j ahead of its anchor: the architecture must take
    position ids (ALiBi models such as BLOOM and MPT derive positions from the sequence alone)."""
    import inspect

    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    if "position_ids" not in inspect.signature(model_class.forward).parameters:
        raise HarnessError(
            f"{model_class.__name__} takes no position ids, which SDSAT needs (an adaptive token stands for a "
            "position ahead of its anchor)"
        )


def _missing(package: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(package) is None


class _Retrofit(StageRunner):
    def __init__(self, cfg: RecipeConfig, stages: tuple[str, ...], log, source: weights.Source):
        super().__init__(cfg, stages, log)
        self.source = source
        self.extension: Extension | None = None
        self.lora = cfg.lora_rank is not None

    def run(self) -> None:
        work = self.work
        self.stage("corpus", self.corpus_dir / "manifest.json", self.make_corpus)
        self.stage("tokenizer", self.tok_dir / EXTENSION, self.extend_tokenizer)
        self.load_tokenizer()
        self.stage("tokens", work / "heldout.npy", self.make_tokens, after=("corpus", "tokenizer"))
        if self.cfg.adaptive_tokens and (work / "train.npy").exists():
            self.check_adaptive_ids_unused()
        done = self.sdsat_dir / (weights.ADAPTER_META if self.lora else "config.json")
        self.stage("sdsat", done, self.finetune, every_process=True, after=("tokens",))
        for kind in DRAFTERS:
            drafter = partial(self.drafter, kind)
            self.stage(kind, work / kind / "drafter.json", drafter, every_process=True, after=("tokens",))
        if done.exists():
            self.stage("evaluate", work / "eval.json", self.evaluate)

    def make_corpus(self) -> None:
        cfg = self.cfg
        if cfg.corpus:
            corpus_from_documents(list(cfg.corpus), self.corpus_dir, cfg.data_dir, cfg.humaneval_path)
        else:
            super().make_corpus()

    def extend_tokenizer(self) -> None:
        tokenizer = weights.open_tokenizer(self.source)
        base_rows = weights.check_causal_lm(self.source).vocab_size
        extension = extend_tokenizer(tokenizer, base_rows, self.cfg.max_k, self.cfg.adaptive_tokens)
        tokenizer.save_pretrained(self.tok_dir)
        (self.tok_dir / EXTENSION).write_text(json.dumps(extension.to_json(), indent=1))

    def load_tokenizer(self) -> None:
        from transformers import AutoTokenizer

        if (self.tok_dir / EXTENSION).exists():
            self.tokenizer = AutoTokenizer.from_pretrained(self.tok_dir)
            self.extension = Extension.from_json(json.loads((self.tok_dir / EXTENSION).read_text()))
            self.adaptive = self.extension.adaptive

    def make_tokens(self) -> None:
        cfg, work, fim = self.cfg, self.work, self.extension.fim
        fim_tokens = (fim.prefix, fim.suffix, fim.middle, fim.end)
        counts = {}
        for split, rate in (("train", cfg.fim_rate), ("heldout", 0.0)):  # held out: plain, as the base reads
            texts = [d["text"] for d in read_corpus(self.corpus_dir / f"{split}.jsonl")]
            stream = encode_documents(self.tokenizer, texts, rate, seed=cfg.seed, fim_tokens=fim_tokens)
            np.save(work / f"{split}.npy", stream)
            counts[f"{split}_tokens"] = int(stream.shape[0])
        manifest = json.loads((self.corpus_dir / "manifest.json").read_text())
        (self.corpus_dir / "manifest.json").write_text(json.dumps({**manifest, **counts}, indent=1))
        if counts["train_tokens"] == 0:
            (work / "heldout.npy").unlink()  # the stage is not done: a re-run with a corpus tries again
            raise HarnessError(
                f"the corpus has no training documents ({manifest.get('candidates', 0)} candidates, rejected "
                f"{manifest.get('rejected', {})}): give --roots with source files or --corpus documents"
            )

    def check_adaptive_ids_unused(self) -> None:
        """An id named by --adaptive-tokens must never be text: drafting would read it as both."""
        for split in ("train", "heldout"):
            stream = np.load(self.work / f"{split}.npy", mmap_mode="r")
            for token_id in sorted(set(self.adaptive.token_ids)):
                count = int(np.count_nonzero(stream == token_id))
                if count:
                    token = self.tokenizer.convert_ids_to_tokens(token_id)
                    raise HarnessError(
                        f"--adaptive-tokens: id {token_id} ({token!r}) occurs {count} times in the {split} corpus; "
                        "an adaptive token must be an id that text never encodes to"
                    )

    def finetune(self) -> None:
        cfg, ext = self.cfg, self.extension
        model = weights.open_plain(self.source, torch.float32).to(self.device)
        grow_vocabulary(model, ext.vocab_size, ext.new_ids)
        stream = np.asarray(np.load(self.work / "train.npy", mmap_mode="r"))
        adaptive_init(model, ext.adaptive.token_ids, cfg.adaptive_init, stream, cfg.seed)
        seq_len = self.fitting_seq_len(model.config)
        if len(stream) <= seq_len:  # a toy corpus: repeat it rather than fail
            self.log(f"[train] the corpus has {len(stream)} tokens, fewer than a window: repeated")
            stream = np.resize(stream, seq_len + 1)
        fim = fim_positions(stream, *self.tokenizer.convert_tokens_to_ids([ext.fim.prefix, ext.fim.end]))
        model, teacher = self.student_and_teacher(model) if cfg.distill else (self.with_lora(model), None)
        sdsat = {"n_groups": cfg.n_groups, "adaptive_weight": cfg.adaptive_weight, "distill": cfg.distill}
        lr = cfg.lora_lr if self.lora else cfg.retrofit_lr
        tc = self.train_config("sdsat", lr, cfg.sdsat_minutes, seed_offset=1, warmup=50, seq_len=seq_len, **sdsat)
        try:
            log = self.work / "sdsat_log.jsonl"
            model, summary = train(
                model, stream, tc, log, list(ext.adaptive.token_ids), teacher, fim, self.chain("sdsat")
            )
        except torch.OutOfMemoryError:
            raise HarnessError(
                f"out of GPU memory training {tc.batch_size} sequences of {seq_len} tokens (+ {cfg.n_groups} groups of "
                f"{ext.adaptive.max_k} adaptive tokens) per step: lower --batch-size (raise --grad-accum to keep the "
                "tokens per step), --seq-len, --n-groups or --max-k, or train LoRA (--lora-rank)"
            ) from None
        if self.shard.is_main:
            self.save(model, summary)

    def drafter(self, kind: str) -> None:
        """A trained peer's drafter (Medusa heads, an EAGLE layer) on the unchanged base, the same tokens
        (FIM documents, which hold ids the base lacks, left out) and the SDSAT fine-tune's budget."""
        ext = self.extension
        stream = np.asarray(np.load(self.work / "train.npy", mmap_mode="r"))
        fim = fim_positions(stream, *self.tokenizer.convert_tokens_to_ids([ext.fim.prefix, ext.fim.end]))
        self.train_drafter(kind, weights.open_plain(self.source, torch.float32), stream, fim, self.cfg.base)

    def fitting_seq_len(self, config) -> int:
        """--seq-len, shortened where a group's positions (up to seq_len - 1 + max_k) would pass the
        model's learned or trained positions."""
        limit = getattr(config, "max_position_embeddings", None)
        seq_len = self.cfg.seq_len
        if limit and seq_len + self.extension.adaptive.max_k > limit:
            seq_len = limit - self.extension.adaptive.max_k
            self.log(f"[train] --seq-len {self.cfg.seq_len} + max k passes the base's {limit} positions: {seq_len}")
        if seq_len < 2:
            raise HarnessError(f"the base has {limit} positions: too few for {self.extension.adaptive.max_k} drafts")
        return seq_len

    def with_lora(self, model):
        """The model as it trains: itself, or under LoRA adapters on every linear layer, with the new
        embedding rows (input, and output where untied) trained in full."""
        if not self.lora:
            return model
        from peft import LoraConfig, get_peft_model

        rank, new_ids = self.cfg.lora_rank, list(self.extension.new_ids)
        names = {module: name.rsplit(".", 1)[-1] for name, module in model.named_modules()}
        inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
        rows = {names[inputs]: new_ids}
        if outputs is not None and outputs.weight is not inputs.weight:
            rows[names[outputs]] = new_ids
        lora = LoraConfig(
            r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear", trainable_token_indices=rows
        )
        with warnings.catch_warnings():  # peft asks transformers a deprecated question
            warnings.simplefilter("ignore", FutureWarning)
            return get_peft_model(model, lora)

    def student_and_teacher(self, model):
        """The model to train and the frozen base that teaches its standard tokens: for LoRA the same
        model with its adapters switched off, else a copy taken before training."""
        if self.lora:
            student = self.with_lora(model)
            return student, _adapters_off(student)
        base = copy.deepcopy(model).eval().requires_grad_(False)
        return model, lambda x: base(input_ids=x).logits

    def save(self, model, summary: dict) -> None:
        out, ext = self.sdsat_dir, self.extension
        (self.work / "sdsat_summary.json").write_text(json.dumps(summary, indent=1))
        if not self.lora:
            save_checkpoint(model, self.tokenizer, out, ext.adaptive, _declared_dtype(self.source), SHARD)
            return
        # Not the grown embedding matrices (peft would save them whole): their new rows are in the
        # adapter's trainable tokens, and --model grows the base's the same way before applying it.
        model.peft_config["default"].base_model_name_or_path = self.cfg.base  # as sdsat_adapter.json names it
        model.save_pretrained(out, save_embedding_layers=False)
        self.tokenizer.save_pretrained(out)
        base = self.cfg.base
        meta = {
            "base": os.path.abspath(base) if os.path.exists(base) else base,
            "base_sha256": weights.fingerprint(self.source),
            "vocab_size": ext.vocab_size,
            "new_ids": list(ext.new_ids),
            "sdsat": ext.adaptive.to_config(),
            "lora_rank": self.cfg.lora_rank,
        }
        (out / weights.ADAPTER_META).write_text(json.dumps(meta, indent=1))

    def evaluate(self) -> None:
        from harness.training.card import write_card

        results = evaluate(self.cfg, self.work, self.source, self.extension, self.device, self.log)
        write_card(self.sdsat_dir / "README.md", self.cfg, self.work, results)


def _adapters_off(peft_model):
    def teacher(x: torch.Tensor) -> torch.Tensor:
        training = peft_model.training
        peft_model.eval()  # no dropout in the teacher
        try:
            with peft_model.disable_adapter():
                return peft_model(input_ids=x).logits
        finally:
            peft_model.train(training)

    return teacher


def _declared_dtype(source: weights.Source) -> torch.dtype:
    """The dtype the base's weights are stored in (a GGUF file's dequantized weights: fp32)."""
    if source.kind == "gguf":
        return torch.float32
    dtype = getattr(weights.check_causal_lm(source), "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def evaluate(cfg: RecipeConfig, work: Path, source, extension: Extension, device: torch.device, log=print) -> dict:
    """Held-out standard loss of the base (as it is) and of the SDSAT model (loaded as --model loads
    it), their parameters, draft accuracy per offset, and greedy accept rate per k = 0..13 on HumanEval
    prompts and on generic code prompts (held-out corpus documents)."""
    from harness.config import ModelSpec
    from harness.models import load_model

    heldout = np.asarray(np.load(work / "heldout.npy", mmap_mode="r"))
    seq_len = json.loads((work / "sdsat_summary.json").read_text())["config"]["seq_len"]  # as trained
    heldout_key = [weights.file_sha256(work / "heldout.npy"), seq_len, cfg.n_groups]
    progress = EvaluationProgress(work / PROGRESS)
    results: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    base = weights.open_plain(source, torch.float32).to(device).eval()
    results["parameters"] = {"base": sum(p.numel() for p in base.parameters())}  # as it is, before any growth
    if len(heldout) and int(heldout.max()) >= extension.base_rows:
        grow_vocabulary(base, extension.vocab_size, extension.new_ids)
        results["base_note"] = "the tokenizer has ids beyond the base's embedding rows: scored with them grown"
    results["base"] = progress.remembered(
        "heldout/base",
        [weights.fingerprint(source), *heldout_key],
        partial(heldout_metrics, base, heldout, seq_len, None),
    )
    del base
    lm = load_model(
        ModelSpec(model=str(work / "sdsat"), device=str(device), engine="eager")
    )  # fp32: exact, no compiles
    ids = list(lm.adaptive.token_ids)
    results["sdsat"] = progress.remembered(
        "heldout/sdsat",
        [weights.fingerprint(weights.resolve(str(work / "sdsat"))), *heldout_key],
        partial(heldout_metrics, lm.model, heldout, seq_len, ids, n_groups=cfg.n_groups),
    )
    for name in ("base", "sdsat"):
        log(f"[evaluate] {name}: {results[name]}")
    results["parameters"]["sdsat"] = sum(p.numel() for p in lm.model.parameters())
    results.update(acceptance_sweeps(lm, cfg, work, log, progress))
    write_evaluation(work, results)
    return results
