"""What decoding costs at a given model shape on this card, whatever a model accepts.

A synthetic checkpoint is built from a shape (``codellama-7b``, ``codellama-13b`` or any config.json)
with random weights on the device, no download, with the tokenizer and adaptive tokens of the model whose
config.json it is (a size-series point measures its own vocabulary), else of the default model:
- ``random``: the weights as initialised: realistic cost, meaningless tokens;
- ``all-accept``: the final norm zeroed, so every logit is 0 and the greedy token and every draft are
  token 0: every draft is accepted, the speed ceiling of each decoder at that shape.
Synthetic weights measure **cost, never acceptance**: the acceptance of a real model comes from a run,
and :func:`project` combines the two.

Measured per engine: the cost of one decode pass at block sizes 1..128 over a cached context, AR
tokens/s, and each speculative decoder's all-accept tokens per forward pass, tokens/s, speedup over AR
and efficiency (speedup / tokens per forward pass: 1.0 when a wide pass costs what a narrow one does).
Beside them the card's HBM roofline for a decode step: weight bytes / memory bandwidth (measured by a
device copy, and the card's nominal figure where known).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from harness.config import ProbeConfig
from harness.device import median_ms
from harness.engine import DecodeEngine
from harness.errors import HarnessError
from harness.training import DRAFTERS

SHAPES = {
    "codellama-7b": {
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "intermediate_size": 11008,
    },
    "codellama-13b": {
        "hidden_size": 5120,
        "num_hidden_layers": 40,
        "num_attention_heads": 40,
        "num_key_value_heads": 40,
        "intermediate_size": 13824,
    },
}
NOMINAL_BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12}  # bytes/s, vendor datasheets
CONTEXT = 300  # cached positions before each timed pass (a HumanEval prompt and some of its answer)
NEW_TOKENS = 128
NOTE = "synthetic weights: these numbers measure cost, never acceptance"
PROFILED_PASSES = 20
PROFILE_ROWS = 15
# A pass of more tokens does the work of a pass of fewer and more: it may read cheaper by timer noise
# (this much at most, relative) and no more. A busy machine gave 77 / 689 / 197 / 222 ms at blocks
# 1 / 2 / 4 / 8, from which a projection read 3.5x.
MONOTONE_TOLERANCE = 0.15
CURVE_ATTEMPTS = 3
# Whole generations per decoder: this long in all (a 7B's three rounds; a 3M model's 40 ms generations
# fifty times), so that one slow moment is outvoted (s3's first H200 probe, three generations each,
# timed sdsat's passes 24% dearer at k = 5 than at k = 3).
GENERATION_SECONDS = 2.0
GENERATION_ROUNDS = 50


def shape_config(shape: str, base_config) -> dict:
    """The architecture of ``shape`` (a name or a config.json), on ``base_config``'s vocabulary."""
    if shape in SHAPES:
        arch = SHAPES[shape]
    else:
        path = Path(shape)
        if not path.is_file():
            raise HarnessError(f"unknown shape '{shape}' (choose from {', '.join(SHAPES)} or give a config.json)")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise HarnessError(f"{path}: malformed JSON ({exc.msg})") from None
        keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
        if any(k not in raw for k in keys):
            raise HarnessError(f"{path}: a Llama config needs {', '.join(keys)}")
        arch = {k: raw[k] for k in (*keys, "num_key_value_heads", "head_dim", "tie_word_embeddings") if k in raw}
    # What the default model's config would otherwise lend and the shape decides: a head width of
    # hidden / heads (the default model's head_dim would halve a 7B's attention) and an lm_head of
    # its own (CodeLlama ties no embeddings).
    arch = {"head_dim": arch["hidden_size"] // arch["num_attention_heads"], "tie_word_embeddings": False, **arch}
    return {**base_config.to_dict(), **arch, "max_position_embeddings": 4096}


VARIANTS = ("random", "all-accept")


def variants(variant: str) -> tuple[str, ...]:
    if variant == "both":
        return VARIANTS
    if variant not in VARIANTS:
        raise HarnessError(f"--variant: expected random, all-accept or both, got '{variant}'")
    return (variant,)


# Decoders whose drafts a synthetic model can make (the trained peers' by synthetic_drafters).
PROBED = ("sdsat", "sdsat-fused", *DRAFTERS)


def probe_decoders(cfg: ProbeConfig) -> list[tuple[str, int]]:
    """The probe's speculative decoders, at each of its draft lengths."""
    unknown = [d for d in cfg.decoders if d not in PROBED]
    if unknown:
        raise HarnessError(f"probe: cannot probe '{unknown[0]}' (choose from {', '.join(PROBED)})")
    return [(d, k) for d in cfg.decoders for k in cfg.ks if k > 0]


def synthetic_drafters(lm, heads: int, directory: Path) -> str:
    """Drafters for the trained peers at ``lm``'s shape, in ``directory`` (a --drafter): Medusa heads with
    zero blocks and an EAGLE layer that passes the feature through. Both draft the base's own next-token
    prediction again, so on the all-accept variant every draft is accepted, and they cost what trained
    ones of that shape do: their products run whatever their weights."""
    from harness.decoding.eagle import EagleLayer, layer_config
    from harness.decoding.medusa import MedusaHeads

    MedusaHeads(lm.model.config.hidden_size, heads).to(lm.dtype).save(directory / "medusa", lm.name)
    EagleLayer.pass_through(layer_config(lm.model.config)).to(lm.dtype).save(directory / "eagle", lm.name)
    return str(directory)


def vocabulary_source(shape: str) -> str:
    """The model that lends the synthetic one its tokenizer and adaptive tokens: the directory of a shape's
    config.json when it holds a tokenizer (a trained model's), else the default model (a named shape, a
    bare config), so a device run needs no default model beside a point's own files."""
    directory = Path(shape).parent
    if shape not in SHAPES and (directory / "config.json").is_file() and (directory / "tokenizer.json").is_file():
        return str(directory)
    return "default"


def synthetic_model(cfg: ProbeConfig):
    """A LoadedModel of ``cfg.shape`` with random weights, built on the device (no download)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from harness.models import DTYPES, LoadedModel, load_model, resolve_device

    base = load_model(vocabulary_source(cfg.shape))  # its tokenizer, adaptive tokens and config
    device = resolve_device(cfg.device)
    config = LlamaConfig(**shape_config(cfg.shape, base.model.config))
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(
            config, dtype=DTYPES[cfg.dtype], attn_implementation=cfg.attn_implementation
        ).eval()
    if device.type == "cuda" and cfg.projections == "fused":  # as load_model does for the compiled engine
        from harness.engine.fusion import fuse_projections

        fuse_projections(model)
    return LoadedModel(
        cfg.shape,
        model,
        base.tokenizer,
        base.adaptive,
        None,
        device,
        DTYPES[cfg.dtype],
        DecodeEngine(model, "eager"),
    )


class _Variant:
    """Switches one synthetic model between its variants in place (compiled graphs stay valid):
    ``all-accept`` zeroes the final norm, so every logit is 0 and the greedy token and every draft
    are token 0; ``random`` puts the norm's initial weights back."""

    def __init__(self, lm):
        self.norm = lm.model.model.norm.weight
        self.initial = self.norm.detach().clone()

    @torch.no_grad()
    def set(self, variant: str) -> None:
        self.norm.copy_(torch.zeros_like(self.initial) if variant == "all-accept" else self.initial)


def non_monotone(curve: dict[int, float]) -> list[tuple[int, int]]:
    """Pairs of block sizes (smaller, larger) where the smaller pass costs more than the larger one by
    more than MONOTONE_TOLERANCE."""
    qs = sorted(curve)
    return [(a, b) for i, a in enumerate(qs) for b in qs[i + 1 :] if curve[a] > curve[b] * (1 + MONOTONE_TOLERANCE)]


def check_monotone(curve: dict[int, float], where: str) -> None:
    bad = non_monotone(curve)
    if bad:
        a, b = bad[0]
        raise HarnessError(
            f"{where}: the cost curve is not monotone ({a} tokens {curve[a]:.3g} ms > {b} tokens {curve[b]:.3g} ms, "
            f"beyond {MONOTONE_TOLERANCE:.0%}): the machine was busy; measure again on a quiet one"
        )


def decode_passes(lm, blocks) -> dict[int, Callable[[], None]]:
    """One decode pass of ``q`` tokens over ``CONTEXT`` cached positions, per block size, each run once
    (the first pass of a shape) and ready to be timed or profiled."""
    engine, device = lm.engine, lm.device
    engine.reserve(CONTEXT + max(blocks) + 8)
    engine.warm_up(blocks)
    cache = engine.new_cache(CONTEXT + max(blocks))
    ids = torch.ones(1, CONTEXT, dtype=torch.long, device=device)
    engine.forward(cache, ids, torch.arange(CONTEXT, device=device)[None], prefill=True)
    passes = {}
    for q in blocks:
        block = torch.ones(1, q, dtype=torch.long, device=device)
        positions = torch.arange(CONTEXT, CONTEXT + q, device=device)[None]

        def one_pass(block=block, positions=positions):
            engine.forward(cache, block, positions)
            cache.crop(CONTEXT)

        one_pass()
        passes[q] = one_pass
    return passes


def cost_curve(lm, blocks, repeats: int) -> dict[int, float]:
    """Milliseconds of one decode pass of ``q`` tokens over ``CONTEXT`` cached positions, per block size.
    A curve that is not monotone within noise is measured again (the order reversed each time, so a
    drift of the machine's speed does not fall on the same blocks), up to CURVE_ATTEMPTS times."""
    device = lm.device
    passes = decode_passes(lm, blocks)
    order = list(blocks)
    for _ in range(CURVE_ATTEMPTS):
        curve = {q: median_ms(device, passes[q], repeats) for q in order}
        if not non_monotone(curve):
            break
        order.reverse()
    check_monotone(curve, "probe")
    return dict(sorted(curve.items()))


def decoder_speeds(lm, decoders, repeats: int, drafter: str | None = None) -> list[dict]:
    """AR, then each speculative decoder: tokens per forward pass, decode tokens/s, speedup, efficiency
    (the trained peers' drafts from ``drafter``, a --drafter directory).

    The decoders take turns, a generation each per round, and the rounds go on until every decoder has
    had ``GENERATION_SECONDS`` of generations (at least ``repeats // 3`` rounds, at most
    ``GENERATION_ROUNDS``): a disturbance then lands on all of them alike and, at a small shape's
    40 ms generations, in a minority of each one's rounds, which the median drops."""
    from harness.decoding import SamplingParams, StopCondition, make_decoder

    prompt = list(range(1, CONTEXT + 1))
    stop = StopCondition(NEW_TOKENS)  # no EOS, no stop string: every generation runs its full length
    made = []
    for name, k in (("ar", 0), *decoders):
        decoder = make_decoder(name, lm, k=k, drafter=drafter)
        lm.engine.warm_up(decoder.block_sizes(True))
        first = decoder.generate(prompt, stop, SamplingParams())  # warm-up
        made.append((name, k, decoder, first.stats.tokens_per_forward))
    rates: list[list[float]] = [[] for _ in made]
    start, rounds = time.perf_counter(), 0
    while rounds < max(1, repeats // 3) or (
        rounds < GENERATION_ROUNDS and time.perf_counter() - start < GENERATION_SECONDS * len(made)
    ):
        for (_, _, decoder, _), rate in zip(made, rates, strict=True):
            rate.append(decoder.generate(prompt, stop, SamplingParams()).stats.tokens_per_s)
        rounds += 1
    rows = [
        {
            "decoder": name,
            "k": k,
            "block_sizes": list(decoder.block_sizes(True)),
            "tokens_per_forward": tokens_per_forward,
            "tokens_per_s": statistics.median(rate),
            "generations": len(rate),
        }
        for (name, k, decoder, tokens_per_forward), rate in zip(made, rates, strict=True)
    ]
    ar = rows[0]["tokens_per_s"]
    for row in rows:
        row["speedup"] = row["tokens_per_s"] / ar
        row["efficiency"] = row["speedup"] / row["tokens_per_forward"]
    return rows


def kernel_profile(lm, passes: int = PROFILED_PASSES) -> list[dict]:
    """Where one AR decode pass (1 token over ``CONTEXT`` cached positions) spends its time: the top
    ``PROFILE_ROWS`` operations by self time per pass (on a GPU the kernels, CUDA-graph replays'
    included), from torch.profiler over ``passes`` passes, each with its share of the whole."""
    from torch.profiler import ProfilerActivity, profile

    one_pass = decode_passes(lm, [1])[1]
    cuda = lm.device.type == "cuda"
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        for _ in range(passes):
            one_pass()
        if cuda:
            torch.cuda.synchronize(lm.device)
    field = "self_device_time_total" if cuda else "self_cpu_time_total"
    times = [(e.key, getattr(e, field) / passes / 1e3) for e in prof.key_averages()]  # ms per pass
    times = sorted((t for t in times if t[1] > 0), key=lambda t: -t[1])
    total = sum(ms for _, ms in times)
    return [{"operation": name, "ms_per_pass": ms, "share": ms / total} for name, ms in times[:PROFILE_ROWS]]


def roofline(lm) -> dict:
    """A decode step reads every weight once: weight bytes / bandwidth is its lower bound."""
    weights = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    out = {"weight_bytes": weights}
    if lm.device.type != "cuda":
        return out
    name = torch.cuda.get_device_name(lm.device)
    x = torch.empty(1 << 30, dtype=torch.uint8, device=lm.device)
    y = torch.empty_like(x)
    ms = median_ms(lm.device, lambda: y.copy_(x), 10)
    measured = 2 * x.numel() / (ms / 1e3)  # a copy reads and writes every byte
    out["bandwidth_measured"] = measured
    out["step_ms_measured_bandwidth"] = weights / measured * 1e3
    nominal = next((bw for card, bw in NOMINAL_BANDWIDTH.items() if card in name), None)
    if nominal:
        out["bandwidth_nominal"] = nominal
        out["step_ms_nominal"] = weights / nominal * 1e3
        out["tokens_per_s_nominal"] = nominal / weights
    return out


def run_probe(cfg: ProbeConfig, out_dir: str) -> list[Path]:
    """Build the shape, measure it under each engine (the cost curve once, the decoders per variant),
    and write each variant's probe.json and cost figure: in ``out_dir``, or in ``out_dir/<variant>``
    when both are measured. Both variants run on one model: one build, one compilation."""
    names = variants(cfg.variant)
    decoders = probe_decoders(cfg)
    lm = synthetic_model(cfg)
    with tempfile.TemporaryDirectory(prefix="probe-drafters-") as scratch:  # a 7B EAGLE layer is ~0.5 GB
        trained = any(d in DRAFTERS for d, _ in decoders)
        drafter = synthetic_drafters(lm, max(cfg.ks), Path(scratch)) if trained else None
        results = measure(cfg, lm, names, decoders, drafter)
    paths = []
    for v, result in results.items():
        out = Path(out_dir) / v if len(names) > 1 else Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "probe.json").write_text(json.dumps(result, indent=1))
        plot_cost(result, out / "cost_vs_block.png")
        paths.append(out / "probe.json")
    return paths


def measure(cfg: ProbeConfig, lm, names: tuple[str, ...], decoders, drafter: str | None) -> dict[str, dict]:
    """Each variant's probe.json content: per engine the cost curve and profile (once) and the decoders."""
    switch = _Variant(lm)
    card = torch.cuda.get_device_name(lm.device) if lm.device.type == "cuda" else "cpu"
    common = {
        "shape": cfg.shape,
        "dtype": cfg.dtype,
        "attn_implementation": cfg.attn_implementation,
        "card": card,
        "parameters": sum(p.numel() for p in lm.model.parameters()),
        "context": CONTEXT,
        "new_tokens": NEW_TOKENS,
        "roofline": roofline(lm),
    }
    results = {v: {**common, "variant": v, "engines": {}, "note": NOTE} for v in names}
    for engine in cfg.engines:
        lm.engine = DecodeEngine(lm.model, engine)
        curve = cost_curve(lm, cfg.blocks, cfg.repeats)
        profile = kernel_profile(lm)
        for v in names:
            switch.set(v)
            speeds = decoder_speeds(lm, decoders, cfg.repeats, drafter)
            results[v]["engines"][engine] = {
                "configuration": lm.engine.description,
                "matrix_library_per_block": lm.engine.graph_libraries(),
                "cost_ms": curve,
                "decoders": speeds,
                "ar_tokens_per_s": speeds[0]["tokens_per_s"],
                "profile": profile,
            }
            nominal = common["roofline"].get("tokens_per_s_nominal")
            if nominal:  # AR's share of the HBM roofline (a step that reads every weight once)
                results[v]["engines"][engine]["ar_roofline_share"] = speeds[0]["tokens_per_s"] / nominal
    return results


def plot_cost(result: dict, path: Path) -> None:
    from harness.figures import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    for engine, data in result["engines"].items():
        cost = {int(q): ms for q, ms in data["cost_ms"].items()}  # keys are text once read from probe.json
        ax.plot(sorted(cost), [cost[q] for q in sorted(cost)], marker="o", label=f"{engine}")
    step = result["roofline"].get("step_ms_nominal")
    if step:
        ax.axhline(step, linestyle="--", color="grey", label="HBM roofline (weights / bandwidth)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tokens in one decode pass")
    ax.set_ylabel("ms per pass")
    shape = Path(result["shape"])  # a name, or a config.json path: its folder names the model
    name = shape.parent.name if shape.name == "config.json" else shape.name
    ax.set_title(f"{name} on {result['card']}, {result['dtype']}\n(synthetic weights: cost only)", fontsize=10)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def load_probe(path: str | Path, engine: str) -> dict:
    """A probe.json that measured ``engine``, or one line saying it is not one."""
    try:
        probe = json.loads(Path(path).read_text())
        probe["engines"][engine]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise HarnessError(f"--probe: {path} is not a probe.json with engine '{engine}'") from None
    return probe


def project(records: list[dict], probe: dict, engine: str) -> list[dict]:
    """The speedup a run's acceptance would give at the probe's shape and card: per greedy record,
    its tokens per forward pass x (time of an AR pass / time of one of its decoder's passes), paired
    per problem, geometric mean.

    A pass's time is what the probe measured per pass of that decoder and k in whole generations
    (kernels and the host's per-pass work: on a small model the host's share is not negligible);
    where the probe has no such decoder, the cost curve at its largest block, kernels only. A record
    whose largest block is beyond both is not projected: the probe did not measure what it costs."""
    import math

    measured = probe["engines"][engine]
    curve = {int(q): ms for q, ms in measured["cost_ms"].items()}
    check_monotone(curve, f"probe of {probe.get('shape')} ({engine})")

    def cost(q: int) -> float:
        return curve[min(b for b in curve if b >= q)]

    rows = {(d["decoder"], d["k"]): d for d in measured.get("decoders", [])}
    ar_pass = 1e3 / measured["ar_tokens_per_s"] if measured.get("ar_tokens_per_s") else None

    def pass_ratio(decoder: str, k: int, blocks) -> float | None:
        row = rows.get((decoder, k))
        if row and ar_pass:
            return ar_pass / (1e3 * row["tokens_per_forward"] / row["tokens_per_s"])
        return cost(1) / cost(max(blocks)) if max(blocks) <= max(curve) else None

    groups: dict[tuple, list[float]] = {}
    for r in records:
        # a record written before records carried their block sizes: the probe's decoder of that k has them
        blocks = r.get("block_sizes") or rows.get((r["decoder"], r["k"]), {}).get("block_sizes")
        if r["temperature"] != 0 or r["decoder"] == "ar" or not blocks or not r.get("forward_passes"):
            continue
        priced = pass_ratio(r["decoder"], r["k"], blocks)
        if priced is not None:
            groups.setdefault((r["task"], r["decoder"], r["k"]), []).append(
                r["new_tokens"] / r["forward_passes"] * priced
            )
    return [
        {
            "task": t,
            "decoder": d,
            "k": k,
            "projected_speedup": math.exp(statistics.mean(map(math.log, v))),
            "problems": len(v),
        }
        for (t, d, k), v in sorted(groups.items())
    ]
