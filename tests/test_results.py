"""Planning, the run directory (resume checks, repair, merge, run.json), run comparison and the CI
gate, on records made by hand: no model is loaded here."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest

from harness.check import absent_tasks, exactness_failures, gate
from harness.config import DEFAULTS, RunConfig, settings
from harness.errors import HarnessError
from harness.planning import my_problems, plan
from harness.report import compare_runs, config_differences
from harness.results import Record, RunDirectory, WorkUnit, record_key

PROBLEMS = {
    "humaneval": [SimpleNamespace(problem_id="a", reference="x"), SimpleNamespace(problem_id="b", reference=None)]
}


def _record(problem: str = "a", decoder: str = "ar", k: int = 0, **more) -> dict:
    return Record("humaneval", problem, decoder, k, 0.0, "-", 0, **more).to_dict()


def test_plan_puts_ar_first_and_gives_each_decoder_its_draft_lengths():
    cfg = RunConfig(model="m", tasks=("humaneval",), decoders=("sdsat-fused", "hf-pld", "sdsat", "ar"), ks=(0, 3))
    units = plan(cfg, {"humaneval": PROBLEMS["humaneval"][:1]})
    assert units[0].decoder == "ar"
    assert [(u.decoder, u.k) for u in units] == [
        ("ar", 0),
        ("sdsat-fused", 3),
        ("hf-pld", 0),
        ("sdsat", 0),
        ("sdsat", 3),
    ]


def test_plan_samples_and_accept_rules_only_where_they_apply():
    cfg = RunConfig(
        model="m",
        tasks=("humaneval",),
        decoders=("ar", "sdsat", "reference"),
        ks=(2,),
        temperatures=(0.0, 0.8),
        accepts=("exact", "paper"),
        n_samples=3,
    )
    units = plan(cfg, PROBLEMS)
    greedy = [u for u in units if u.temperature == 0]
    sampled = [u for u in units if u.temperature > 0]
    # the reference control: greedy only, and only where the problem has a reference
    assert [(u.problem_id, u.decoder) for u in greedy] == [
        ("a", "ar"),
        ("a", "sdsat"),
        ("a", "reference"),
        ("b", "ar"),
        ("b", "sdsat"),
    ]
    assert {u.accept for u in greedy} == {"-"}
    per_problem = [u for u in sampled if u.problem_id == "a"]
    assert sum(u.decoder == "ar" for u in per_problem) == 3  # n_samples, one accept rule ("-")
    assert sorted({u.accept for u in per_problem if u.decoder == "sdsat"}) == ["exact", "paper"]
    assert len({u.key for u in units}) == len(units)


def test_each_process_takes_every_nth_problem_whole():
    problems = {"t1": list("abc"), "t2": list("de")}
    shards = [my_problems(problems, SimpleNamespace(owns=lambda n, i=i: n % 2 == i)) for i in range(2)]
    assert shards == [{"t1": ["a", "c"], "t2": ["e"]}, {"t1": ["b"], "t2": ["d"]}]


def test_settings_flag_over_suite_over_default():
    chosen = settings({"k": "1,2", "top_p": None}, {"name": "s", "k": [9], "max_new_tokens": 16})
    assert chosen["ks"] == (1, 2) and chosen["max_new_tokens"] == 16 and chosen["top_p"] == DEFAULTS["top_p"]
    with pytest.raises(HarnessError, match=r"suite .s.: unknown setting.*topp"):
        settings({}, {"name": "s", "topp": 0.9})
    with pytest.raises(HarnessError, match="--k: malformed value '1,x'"):
        settings({"k": "1,x"}, {})


def test_records_read_back_with_every_field_and_units_keyed():
    old = {"task": "humaneval", "problem_id": "a", "decoder": "ar", "k": 0, "temperature": 0.0, "accept": "-"}
    with pytest.raises(KeyError):
        Record.from_dict(old)  # no sample_idx: not a record
    record = Record.from_dict({**old, "sample_idx": 0, "tokens_per_s": 3.0}).to_dict()
    assert record["tokens_per_s"] == 3.0 and record["exactness"] is None  # an older record's missing fields
    assert record_key(record) == WorkUnit("humaneval", "a", "ar", 0, 0.0, "-", 0).key


def test_prepare_refuses_results_without_resume_and_checks_the_configuration(tmp_path):
    out = RunDirectory(tmp_path)
    identity = RunConfig(model="m", tasks=("humaneval",)).identity()
    defaults = RunConfig.default_identity("m", ("humaneval",))
    assert out.prepare(identity, defaults, resume=False) == []
    out.results.write_text(json.dumps(_record()) + "\n")
    with pytest.raises(HarnessError, match="already has results: pass --resume"):
        out.prepare(identity, defaults, resume=False)
    with pytest.raises(HarnessError, match=r"run\.json is missing"):
        out.prepare(identity, defaults, resume=True)
    out.write_info({"model": "m", "tasks": ["humaneval"]}, {}, False, None)  # older run.json: defaults fill in
    assert len(out.prepare(identity, defaults, resume=True)) == 1
    other = RunConfig(model="m", tasks=("humaneval",), max_new_tokens=9).identity()
    with pytest.raises(HarnessError, match=r"another configuration \(differs in max_new_tokens\)"):
        out.prepare(other, defaults, resume=True)


def test_a_record_cut_by_a_kill_is_dropped_and_a_broken_middle_refused(tmp_path):
    out = RunDirectory(tmp_path)
    identity = RunConfig(model="m", tasks=("humaneval",)).identity()
    out.write_info(identity, {}, False, None)
    good = json.dumps(_record())
    out.results.write_text(good + "\n" + good[:20])
    assert len(out.prepare(identity, identity, resume=True)) == 1
    assert out.results.read_text() == good + "\n"  # repaired: the cut unit runs again
    out.results.write_text(good[:20] + "\n" + good + "\n")
    with pytest.raises(HarnessError, match=r"results.jsonl:1: malformed record"):
        out.prepare(identity, identity, resume=True)


def test_merge_orders_by_plan_keeps_the_first_of_each_unit_and_removes_shards(tmp_path):
    out = RunDirectory(tmp_path)
    a, b = _record("a"), _record("b")
    (tmp_path / "results.rank1.jsonl").write_text(json.dumps(b) + "\n")
    (tmp_path / "results.rank0.jsonl").write_text(json.dumps(a) + "\n" + json.dumps({**a, "completion": "dup"}) + "\n")
    out.merge([record_key(a), record_key(b)])
    merged = [json.loads(line) for line in out.results.read_text().splitlines()]
    assert [r["problem_id"] for r in merged] == ["a", "b"] and merged[0]["completion"] is None
    assert out.result_files() == [out.results]


def test_run_json_remembers_every_start(tmp_path):
    out = RunDirectory(tmp_path)
    out.write_info({"model": "m"}, {"units": 2}, True, "bubblewrap")
    out.write_info({"model": "m"}, {"units": 2}, False, None)  # resumed without execution
    info = out.info()
    assert info["allow_code_execution"] is True and info["isolation"] == ["bubblewrap"] and len(info["starts"]) == 2


def test_a_failed_start_leaves_no_directory(tmp_path):
    out = RunDirectory(tmp_path / "run")
    out.ensure_writable()
    out.write_info({}, {}, False, None)
    out.remove_if_unused()
    assert not out.path.exists()
    kept = RunDirectory(tmp_path / "kept")
    kept.ensure_writable()
    kept.results.write_text(json.dumps(_record()) + "\n")
    kept.remove_if_unused()
    assert kept.results.exists()


def test_load_is_one_line_on_a_missing_or_broken_run(tmp_path):
    with pytest.raises(HarnessError, match=r"no results\.jsonl"):
        RunDirectory(tmp_path).load()
    (tmp_path / "results.jsonl").write_text("{not json\n")
    with pytest.raises(HarnessError, match=r"results\.jsonl:1: malformed record"):
        RunDirectory(tmp_path).load()


def test_gate_tolerances_are_floors_below_the_baseline():
    baseline = {
        "metrics": {
            "humaneval/sdsat/k=3:tokens_per_forward": {"value": 2.0, "kind": "rel", "tolerance": 0.05},
            "humaneval/sdsat/k=3:pass@1": {"value": 0.5, "kind": "abs", "tolerance": 0.05},
            "humaneval/sdsat/k=5:pass@1": {"value": 0.5},
        }
    }
    values = {"humaneval/sdsat/k=3:tokens_per_forward": 1.91, "humaneval/sdsat/k=3:pass@1": 0.44}
    verdicts = {v.metric: v.ok for v in gate(baseline, values)}
    assert verdicts == {
        "humaneval/sdsat/k=3:tokens_per_forward": True,  # 1.91 >= 2.0 * 0.95
        "humaneval/sdsat/k=3:pass@1": False,  # 0.44 < 0.5 - 0.05
        "humaneval/sdsat/k=5:pass@1": False,  # missing
    }
    assert absent_tasks({"metrics": {"multiple-js/ar/k=0:pass@1": {}, "all-tasks/x:speedup": {}}}, [_record()]) == [
        "multiple-js"
    ]


def test_gate_fails_a_mismatch_in_any_dtype_and_any_divergence_in_fp32():
    records = [_record(decoder="sdsat", k=3, exactness="numerical"), _record("b", "sdsat", 3, exactness="mismatch")]
    assert len(exactness_failures(records, {"config": {"dtype": "fp32"}})) == 2
    bf16 = exactness_failures(records, {"config": {"dtype": "bf16"}})
    assert len(bf16) == 1 and "mismatch" in bf16[0]
    assert exactness_failures(records[:1], {"config": {"dtype": "bf16"}}) == []


def test_comparison_deltas_against_the_first_run_and_differing_settings():
    row = {"task": "humaneval", "decoder": "sdsat", "k": 3, "temperature": 0.0, "top_p": 1.0, "accept": "-"}
    first = pd.DataFrame([{**row, "tokens_per_forward": 2.0, "pass@1": 0.5}])
    second = pd.DataFrame([{**row, "tokens_per_forward": 2.5, "pass@1": 0.25}])
    table = compare_runs({"one": first, "two": second})
    assert list(table["Δ tokens_per_forward"]) == [0.0, 0.5] and list(table["Δ pass@1"]) == [0.0, -0.25]
    infos = {"one": {"config": {"model": "a", "dtype": "fp32"}}, "two": {"config": {"model": "b", "dtype": "bf16"}}}
    assert config_differences(infos) == ["dtype"]


def test_plan_alternates_the_decoders_order_from_problem_to_problem():
    cfg = RunConfig(model="m", tasks=("humaneval",), decoders=("ar", "sdsat", "sdsat-fused"), ks=(3,))
    units = plan(cfg, {"humaneval": PROBLEMS["humaneval"][:2]})
    first, second = units[:3], units[3:]
    assert [u.decoder for u in first] == ["ar", "sdsat", "sdsat-fused"]
    assert [u.decoder for u in second] == ["ar", "sdsat-fused", "sdsat"]  # AR first still: the reference
    assert first[0].problem_id != second[0].problem_id
