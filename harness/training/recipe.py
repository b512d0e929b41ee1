"""The default-model recipe, stage by stage: corpus -> tokenizer -> tokens -> pretrain -> sdsat ->
evaluate. Each stage writes under ``--work`` and is skipped when its output exists, so a run that
was cut off resumes, and the stages can be split over several calls of a lent GPU."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import torch

from harness.training import DRAFTERS, STAGES
from harness.training.checkpoint import adaptive_spec_for, llama_config, save_checkpoint
from harness.training.config import RecipeConfig
from harness.training.corpus import read_corpus
from harness.training.data import encode_documents
from harness.training.evaluation import (
    PROGRESS,
    EvaluationProgress,
    acceptance_sweeps,
    greedy_acceptance,
    heldout_metrics,
    humaneval_prompts,
    humaneval_stop,
    write_evaluation,
)
from harness.training.stages import StageRunner
from harness.training.tokenizer import train_bpe_tokenizer
from harness.training.train import train
from harness.weights import dir_sha256, file_sha256

SHARD = "12MB"  # files small enough to bring home from a lent GPU
# Fine-tuning variants compared from the same base at the same time budget (stage "compare").
VARIANTS = {"sdsat": ("sdsat", False), "sdsat-distill": ("sdsat", True), "naive": ("naive", False)}  # mode, distill


def run(cfg: RecipeConfig, stages: tuple[str, ...] = STAGES, log=print) -> None:
    """Run the requested stages. Under ``accelerate launch`` with several processes the data stages and
    the evaluation run on the main process while the others wait, the training stages run on every
    process (DDP or FSDP, as the launch configures) and the main process saves the checkpoint."""
    _Recipe(cfg, stages, log).run()


class _Recipe(StageRunner):
    """One run of the from-scratch recipe: its stages."""

    def __init__(self, cfg: RecipeConfig, stages: tuple[str, ...], log):
        super().__init__(cfg, stages, log)
        self.base_dir, self.draft_dir = self.work / "base", self.work / "draft"

    def run(self) -> None:
        cfg, work = self.cfg, self.work
        self.stage("corpus", self.corpus_dir / "manifest.json", self.make_corpus)
        self.stage("tokenizer", self.tok_dir / "tokenizer.json", self.make_tokenizer, after=("corpus",))
        self.load_tokenizer()
        self.stage("tokens", work / "heldout.npy", self.make_tokens, after=("corpus", "tokenizer"))
        model_shape = (cfg.hidden, cfg.layers, cfg.heads, cfg.intermediate)
        draft_shape = (cfg.draft_hidden, cfg.draft_layers, cfg.draft_heads, cfg.draft_intermediate)
        base = partial(self.pretrain, self.base_dir, "pretrain", model_shape, cfg.pretrain_minutes)
        self.stage("pretrain", self.base_dir / "config.json", base, every_process=True, after=("tokens",))
        on_base = ("tokens", "pretrain")  # what every stage that trains on the base needs first
        self.stage("sdsat", self.sdsat_dir / "config.json", self.finetune, every_process=True, after=on_base)
        draft = partial(self.pretrain, self.draft_dir, "draft", draft_shape, cfg.draft_minutes)
        self.stage("draft", self.draft_dir / "config.json", draft, every_process=True, after=("tokens",))
        for kind in DRAFTERS:
            drafter = partial(self.drafter, kind)
            self.stage(kind, work / kind / "drafter.json", drafter, every_process=True, after=on_base)
        if (self.sdsat_dir / "config.json").exists():
            self.stage("evaluate", None, partial(evaluate, cfg, work, self.device.type, self.log))
        self.stage("compare", work / "compare.json", self.compare, every_process=True, after=("pretrain",))

    def drafter(self, kind: str) -> None:
        """A trained peer's drafter (Medusa heads, an EAGLE layer) on the frozen base model (``W/base``),
        the same tokens, the SDSAT fine-tune's budget."""
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(self.base_dir, dtype=torch.float32)
        stream = np.asarray(np.load(self.work / "train.npy", mmap_mode="r"))
        self.train_drafter(kind, base, stream, None, str(self.base_dir))

    def make_tokenizer(self) -> None:
        budget = self.cfg.tokenizer_sample_mb * 1e6
        sample = []
        for doc in read_corpus(self.corpus_dir / "train.jsonl"):
            sample.append(doc["text"])
            budget -= len(doc["text"])
            if budget <= 0:
                break
        train_bpe_tokenizer(sample, self.cfg.vocab_size).save_pretrained(self.tok_dir)

    def load_tokenizer(self) -> None:
        from transformers import AutoTokenizer

        if self.tok_dir.exists():
            self.tokenizer = AutoTokenizer.from_pretrained(self.tok_dir)
            self.adaptive = adaptive_spec_for(self.tokenizer, self.cfg.max_k, repeated=self.cfg.repeated_adaptive)

    def make_tokens(self) -> None:
        work = self.work
        for split in ("train", "heldout"):
            texts = [d["text"] for d in read_corpus(self.corpus_dir / f"{split}.jsonl")]
            np.save(work / f"{split}.npy", encode_documents(self.tokenizer, texts, seed=self.cfg.seed))
        manifest = json.loads((self.corpus_dir / "manifest.json").read_text())
        manifest["train_tokens"] = int(np.load(work / "train.npy", mmap_mode="r").shape[0])
        manifest["heldout_tokens"] = int(np.load(work / "heldout.npy", mmap_mode="r").shape[0])
        (self.corpus_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))

    def save(self, model, out_dir: Path, name: str, summary: dict, spec) -> None:
        if self.shard.is_main:
            save_checkpoint(model, self.tokenizer, out_dir, spec, torch.bfloat16, SHARD)
            (self.work / f"{name}_summary.json").write_text(json.dumps(summary, indent=1))

    def pretrain(self, out_dir: Path, name: str, shape: tuple[int, int, int, int], minutes: float) -> None:
        from transformers import LlamaForCausalLM

        hidden, layers, heads, intermediate = shape
        tokenizer = self.tokenizer
        config = llama_config(
            len(tokenizer), hidden, layers, heads, intermediate=intermediate, max_positions=2048, tokenizer=tokenizer
        )
        torch.manual_seed(self.cfg.seed)  # the same initial weights in every process
        model = LlamaForCausalLM(config).to(self.device)
        stream = np.asarray(np.load(self.work / "train.npy", mmap_mode="r"))
        tc = self.train_config("pretrain", self.cfg.pretrain_lr, minutes, name=name)
        model, summary = train(model, stream, tc, self.work / f"{name}_log.jsonl", chain=self.chain(name))
        self.save(model, out_dir, name, summary, None)

    def finetune(self) -> None:
        from transformers import LlamaForCausalLM

        cfg, work, ids = self.cfg, self.work, list(self.adaptive.token_ids)
        model = LlamaForCausalLM.from_pretrained(self.base_dir, dtype=torch.float32).to(self.device)
        stream = np.asarray(np.load(work / "train.npy", mmap_mode="r"))
        sdsat = {"n_groups": cfg.n_groups, "adaptive_weight": cfg.adaptive_weight, "distill": cfg.distill}
        tc = self.train_config("sdsat", cfg.sdsat_lr, cfg.sdsat_minutes, seed_offset=1, warmup=50, **sdsat)
        model, summary = train(model, stream, tc, work / "sdsat_log.jsonl", ids, chain=self.chain("sdsat"))
        if self.shard.is_main:
            heldout = np.asarray(np.load(work / "heldout.npy", mmap_mode="r"))
            summary["heldout"] = heldout_metrics(model, heldout, cfg.seq_len, ids, n_groups=cfg.n_groups)
        self.save(model, self.sdsat_dir, "sdsat", summary, self.adaptive)

    def compare(self) -> dict:
        """Fine-tune the base with each of VARIANTS for the same time; record standard-token loss curves
        (the paper's Figure 5 compares ours with naive insertion), held-out loss without adaptive tokens,
        draft accuracy per offset and the greedy accept rate at k = 5 (at most) on HumanEval prompts. Every process
        trains; the main one measures and writes. The variants' settings come from ``train_config``, as
        the other stages' do (bf16, gradient accumulation and a fixed step count included)."""
        from transformers import LlamaForCausalLM

        from harness.models import LoadedModel, fim_from_tokenizer

        cfg, work, ids = self.cfg, self.work, list(self.adaptive.token_ids)
        stream = np.asarray(np.load(work / "train.npy", mmap_mode="r"))
        heldout = np.asarray(np.load(work / "heldout.npy", mmap_mode="r"))
        prompts = humaneval_prompts(cfg.humaneval_path, cfg.eval_prompts)
        results = {}
        for name, (mode, distill) in VARIANTS.items():
            model = LlamaForCausalLM.from_pretrained(self.base_dir, dtype=torch.float32).to(self.device)
            tc = self.train_config(
                mode,
                cfg.sdsat_lr,
                cfg.compare_minutes,
                seed_offset=1,
                warmup=50,
                log_every=10,
                n_groups=cfg.n_groups,
                adaptive_weight=cfg.adaptive_weight,
                distill=distill,
            )
            model, summary = train(model, stream, tc, work / f"compare_{name}_log.jsonl", ids)
            if not self.shard.is_main:
                continue
            metrics = heldout_metrics(model, heldout, cfg.seq_len, ids, n_groups=cfg.n_groups)
            fim = fim_from_tokenizer(self.tokenizer)
            lm = LoadedModel(name, model, self.tokenizer, self.adaptive, fim, self.device, torch.float32)
            k = min(5, self.adaptive.max_k)  # k = 5 as the paper's 7B, or every adaptive token a small model has
            metrics[f"humaneval_k{k}"] = greedy_acceptance(lm, prompts, k, cfg.eval_max_new_tokens, humaneval_stop())
            results[name] = {"summary": summary, **metrics}
            self.log(f"[compare] {name}: {metrics}")
        if self.shard.is_main:
            (work / "compare.json").write_text(json.dumps(results, indent=1))
        return results


def evaluate(cfg: RecipeConfig, work: Path, device: str, log=print) -> dict:
    """Held-out standard loss and parameters of base and SDSAT, draft accuracy per offset, and greedy
    accept rate and tokens per forward of the two-step decoder at k = 0..13 on HumanEval prompts and on
    generic code prompts (held-out corpus documents)."""
    from harness.config import ModelSpec
    from harness.models import load_model

    heldout = np.asarray(np.load(work / "heldout.npy", mmap_mode="r"))
    heldout_key = [file_sha256(work / "heldout.npy"), cfg.seq_len, cfg.n_groups]
    progress = EvaluationProgress(work / PROGRESS)
    results: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "parameters": {}}
    for name in ("base", "sdsat"):
        lm = load_model(ModelSpec(model=str(work / name), device=device))  # fp32
        ids = list(lm.adaptive.token_ids) if lm.adaptive else None
        results[name] = progress.remembered(
            f"heldout/{name}",
            [dir_sha256(work / name), *heldout_key],
            partial(heldout_metrics, lm.model, heldout, cfg.seq_len, ids, n_groups=cfg.n_groups),
        )
        results["parameters"][name] = sum(p.numel() for p in lm.model.parameters())
        log(f"[evaluate] {name}: {results[name]}")
    # lm is the SDSAT model now
    results.update(acceptance_sweeps(lm, cfg, work, log, progress))
    write_evaluation(work, results)
    return results
