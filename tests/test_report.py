"""The report: renders from a results.json alone, opens in headless Chromium with its plots visible,
and several runs compare in one report with a cost-vs-gain plot."""
import copy
import json
import os
import shutil
import subprocess

import pytest

from conftest import CONTRACT_CHECKER, ROOT, check_results_contract, cli

FIXTURE = ROOT / "tests" / "fixtures" / "results_medical_demo.json"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
# `make setup` installs Debian's chromium; .ci/run sets DOMAINPT_REQUIRE_CHROMIUM so CI cannot skip these.
needs_chromium = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("DOMAINPT_REQUIRE_CHROMIUM"),
                                    reason="chromium not installed (apt-get install chromium)")


@pytest.fixture
def results():
    return json.loads(FIXTURE.read_text())


def test_report_renders_from_results_json_alone(results, tmp_path):
    from domainpt.report.compare import render_report

    render_report(results, tmp_path)
    md = (tmp_path / "report.md").read_text()
    for heading in ("## Verdict", "## Perplexity and forgetting", "## Tasks", "## Training curve", "## Cost", "## Data", "## Reproducibility"):
        assert heading in md
    assert "icd10-chapter" in md and "-3.4 points" in md and "interval includes zero" in md
    assert "Data (SHA-256): train/tokens.bin" in md and "Majority-label baseline" in md
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2  # task bars + training curve, inlined
    assert "src='http" not in html and "href=" not in html  # self-contained: nothing to fetch


def test_the_plan_line_says_what_would_detect_the_target_and_when_items_cannot():
    from domainpt.report.sections import design_line

    both = design_line({"target": 0.05, "seeds_at_n_test": 7, "items_at_n_seeds": 410}, 120, 3)
    assert both.startswith("To detect 5.0 points in domain minus general: about 7 seeds at 120 items or about 410 "
                           "items at 3 seeds") and "rough estimate from 3 seeds" in both and "unadjusted" in both
    seeds_only = design_line({"target": 0.05, "seeds_at_n_test": 9, "items_at_n_seeds": None}, 120, 3)
    assert "about 9 seeds" in seeds_only and "more items alone would not" in seeds_only
    neither = design_line({"target": 0.05, "seeds_at_n_test": None, "items_at_n_seeds": None, "max_seeds": 12}, 120, 3)
    assert "neither up to 12 seeds" in neither


def _screenshot(html_path, png_path):
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                        "--enable-logging=stderr", "--v=0", "--window-size=1100,3600", f"--screenshot={png_path}",
                        html_path.as_uri()], capture_output=True, text=True, timeout=120)
    return r


def _pixels(png_path):
    import matplotlib.image

    img = matplotlib.image.imread(str(png_path))[..., :3]
    non_white = float((img.min(axis=-1) < 0.95).mean())
    coloured = int(((img.max(axis=-1) - img.min(axis=-1)) > 0.25).sum())  # plots are the only saturated pixels
    return non_white, coloured


@needs_chromium
def test_html_opens_in_headless_chromium_and_shows_the_plots(results, tmp_path):
    from domainpt.report.compare import render_report

    assert CHROMIUM, "DOMAINPT_REQUIRE_CHROMIUM is set but chromium is not installed"
    render_report(results, tmp_path)
    shot = tmp_path / "shot.png"
    r = _screenshot(tmp_path / "report.html", shot)
    assert r.returncode == 0, r.stderr[-2000:]
    assert shot.is_file()
    assert "Uncaught" not in r.stderr and "net::ERR" not in r.stderr, r.stderr[-2000:]
    non_white, coloured = _pixels(shot)
    assert non_white > 0.03 and coloured > 5000, (non_white, coloured)

    # The same check fails on a page without plots: it measures something.
    (tmp_path / "plain.html").write_text("<!doctype html><html><body><p>text only</p></body></html>")
    _screenshot(tmp_path / "plain.html", tmp_path / "plain.png")
    assert _pixels(tmp_path / "plain.png")[1] < 100


def _fake_run(folder, results, name, replay, gpu_hours, diff):
    r = copy.deepcopy(results)
    r["name"], r["recipe"]["data"]["replay_share"], r["cost"]["pretrain_gpu_hours"] = name, replay, gpu_hours
    for t in r["tasks"].values():
        t["difference"]["mean"], t["difference"]["ci"] = diff, [diff - 0.02, diff + 0.02]
    (folder / "compare").mkdir(parents=True)
    (folder / "compare" / "results.json").write_text(json.dumps(r))
    return folder


def test_several_runs_compare_in_one_report_with_cost_vs_gain(results, tmp_path):
    a = _fake_run(tmp_path / "replay05", results, "replay-5", 0.05, 2.0, 0.01)
    b = _fake_run(tmp_path / "replay25", results, "replay-25", 0.25, 3.5, 0.04)
    out = tmp_path / "cmp"
    r = cli("compare", a, b, "--to", out)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    assert res["kind"] == "multi_run" and [x["name"] for x in res["runs"]] == ["replay-5", "replay-25"]
    assert [x["gpu_hours"] for x in res["runs"]] == [2.0, 3.5]
    assert res["runs"][1]["tasks"]["icd10-chapter"]["difference"]["mean"] == 0.04
    assert (out / "cost_vs_gain.png").stat().st_size > 5000
    md = (out / "report.md").read_text()
    assert "| replay-25 | medical | 25% |" in md and "cost_vs_gain.png" in md
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 1

    r = cli("compare", a, tmp_path / "missing-run")
    assert r.returncode == 2 and "missing-run: no compare/results.json" in r.stderr


def test_contract_checker_accepts_the_fixture():
    if not CONTRACT_CHECKER.is_file():
        pytest.skip("the shared contract checker is not next to this checkout")
    check_results_contract(FIXTURE)
