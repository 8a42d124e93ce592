"""The tiny recipe through the real CLI: every stage, the contracts, resumability and error handling."""
import json

import pytest

from conftest import TINY, check_results_contract, cli, copy_stages
from domainpt.manifest import STAGES


def test_run_writes_every_stage_and_the_report(tiny_run):
    out, r = tiny_run
    for stage in ("prepare", "pretrain", "finetune", "evaluate", "compare"):
        m = json.loads((out / stage / "manifest.json").read_text())
        assert m["stage"] == stage and m["wall_s"] > 0 and "transformers" in m["versions"]
    res = json.loads((out / "compare" / "results.json").read_text())
    for kind in ("domain", "general"):
        assert set(res["perplexity"][kind]) == {"general_model", "domain_model"}
    t = res["tasks"]["licence-category"]
    for m in ("general_model", "domain_model"):
        assert len(t[m]["finetuned"]["seeds"]) == 2
        assert t[m]["finetuned"]["ci"][0] <= t[m]["finetuned"]["mean"] <= t[m]["finetuned"]["ci"][1]
        assert "zero_shot" in t[m] and set(t[m]["zero_shot"]) >= {"mean", "ci", "seeds"}
    assert res["stages"]["pretrain"]["tokens"] == 12 * 4 * 128
    assert t["lora"] == {"steps": 6, "batch_size": 4}  # the tiny recipe's lora section: no task sets its own
    assert "2 seeds of 6 LoRA steps" in (out / "compare" / "report.md").read_text()
    # a plan of what would detect 5 points exactly where this design cannot (the report says it in words)
    planned = t["minimum_detectable_difference"] > 0.05
    assert ("design_to_detect" in t) == planned == ("To detect 5.0 points in domain minus general:" in (out / "compare" / "report.md").read_text())
    html = (out / "compare" / "report.html").read_text()
    assert "data:image/png;base64," in html and "http" not in html.split("<pre>")[0]
    assert "licence-category" in (out / "compare" / "report.md").read_text()
    # the job stages' summed job time and parallel efficiency (one process here), in results.json and the cost table
    for stage in ("finetune", "evaluate"):
        st = res["stages"][stage]
        assert st["workers"] == 1 and 0 < st["job_seconds"] <= st["wall_s"] and 0 < st["parallel_efficiency"] <= 1
        assert f"| {stage} | " in (out / "compare" / "report.md").read_text()
        assert f"{st['job_seconds']:.1f} s on W=1 ({st['parallel_efficiency']:.0%})" in (out / "compare" / "report.md").read_text()
    # per-example predictions for paired statistics
    assert (out / "evaluate" / "predictions" / "licence-category" / "domain_model" / "seed1.jsonl").is_file()
    check_results_contract(out / "compare" / "results.json")


def test_pretrain_metrics_and_loss_falls(tiny_run):
    out, _ = tiny_run
    rows = [json.loads(l) for l in open(out / "pretrain" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(1, 13))
    for r in rows:
        assert {"step", "loss", "lr", "tokens", "tokens_per_s"} <= set(r) and r["tokens"] == 4 * 128
    assert sum(r["loss"] for r in rows[-3:]) / 3 < sum(r["loss"] for r in rows[:3]) / 3 - 0.3
    assert "eval_domain_ppl" in rows[5] and "eval_general_ppl" in rows[-1]


def test_prepare_stats_contract(tiny_run):
    out, _ = tiny_run
    s = json.loads((out / "prepare" / "stats.json").read_text())
    for k in ("documents_in", "documents_out", "bad_records", "exact_duplicates_removed", "near_duplicates_removed",
              "pii_replaced", "contaminated_removed", "tokens_out", "sources"):
        assert k in s
    assert abs(s["replay_share_actual"] - 0.1) < 0.02
    assert (out / "prepare" / "data_card.md").read_text().startswith("# Data card")


def test_second_run_does_no_work(tiny_run, tmp_path):
    out = copy_stages(tiny_run[0], tmp_path / "run", *STAGES, "base_model")
    before = {p: p.stat().st_mtime for p in out.rglob("manifest.json")}
    r = cli("run", TINY, f"out_dir={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("finished earlier, skipped") == 5
    assert before == {p: p.stat().st_mtime for p in out.rglob("manifest.json")}


def test_changed_recipe_is_not_mixed_with_finished_stages(tiny_run, tmp_path):
    out = copy_stages(tiny_run[0], tmp_path / "run", *STAGES, "base_model")
    r = cli("run", TINY, f"out_dir={out}", "train.max_steps=13")
    assert r.returncode == 2
    assert "finished with a different recipe" in r.stderr and "Traceback" not in r.stderr
    assert "redo it: domainpt pretrain RECIPE --force" in r.stderr  # the first stage the change reaches, as a command


@pytest.mark.parametrize("override,message", [
    ("data.domain=[{path: /nonexistent/corpus.jsonl}]", "data file not found: /nonexistent/corpus.jsonl"),
    ("model.base=/nonexistent/model", "model not found: /nonexistent/model"),
    ("train.bogus=1", "unknown key 'train.bogus'"),
])
def test_bad_input_gives_one_line_error_and_no_finished_stage(tmp_path, override, message):
    r = cli("run", TINY, f"out_dir={tmp_path / 'run'}", override)
    assert r.returncode == 2
    errors = [l for l in r.stderr.splitlines() if l.startswith("domainpt: error:")]
    assert len(errors) == 1 and message in errors[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not list((tmp_path / "run").rglob("manifest.json"))


def test_cards_command_writes_measured_cards(tiny_run, tmp_path):
    out, _ = tiny_run
    r = cli("cards", TINY, "--to", tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    card = (tmp_path / "scancode-licenses.md").read_text()
    assert "CC-BY-4.0" in card and "documents (measured) | 2,289" in card
    assert (tmp_path / "wikipedia-sample.md").is_file()
