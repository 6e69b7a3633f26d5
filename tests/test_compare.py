"""`mrbench compare`'s HTML report: built from real tiny runs, checked against metrics.json, rendered in Chromium."""

import json
import os
import re
import shutil
import time

import numpy as np
import pytest
from bokeh.models import Legend
from bokeh.plotting import figure

from mrbench.errors import MrbenchError
from mrbench.reports import results
from mrbench.reports.compare import build_layout, write_report
from mrbench.store import RunStore


@pytest.fixture(scope="module")
def runs_dir(finished_experiment):
    """Six finished tiny runs (zero-filled, joint, stl × levels 0, 1), seen AXT1/AXT2, unseen AXFLAIR."""
    return finished_experiment


@pytest.fixture(scope="module")
def runs(runs_dir):
    return results.load_runs([runs_dir])


@pytest.fixture(scope="module")
def layout(runs):
    return build_layout(runs)


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    return write_report(runs, tmp_path_factory.mktemp("report") / "report.html", title="tiny comparison")


def figures(layout) -> list:
    return list(layout.select({"type": figure}))


def metrics_of(runs_dir, run: str) -> dict:
    return json.loads((runs_dir / run / "metrics.json").read_text())


def expected_figures(runs_dir, runs) -> int:
    """Per context one figure per curve metric (PSNR, SSIM); one heat map; one steps figure per
    unseen context; per viewer context (≤ 4) target, zero-filled and each method's image, then the
    |error| maps of zero-filled and each method (3 + 2 × methods); two cost bar charts."""
    contexts = metrics_of(runs_dir, "joint-varnet-s0-seed0")["contexts"]
    unseen = [c for c, v in contexts.items() if not v["seen"]]
    methods = {r.label for r in runs if r.method != "zero-filled"}
    viewer_contexts = min(len(contexts), 4)
    return 2 * len(contexts) + 1 + len(unseen) + viewer_contexts * (3 + 2 * len(methods)) + 2


def test_report_is_self_contained_and_names_everything(report, runs):
    text = report.read_text()
    summary = report.with_name("summary.csv").read_text().splitlines()
    assert summary[0].startswith("label,method,context,seen,scarcity,steps") and len(summary) > 1  # written beside it
    assert "cdn.bokeh.org" not in text and not re.search(r"<script[^>]+src=", text)  # BokehJS inlined
    assert "Bokeh.embed.embed_items" in text and len(text) > 500_000
    assert "<title>tiny comparison</title>" in text
    for label in ("zero-filled-none", "joint-varnet", "stl-varnet"):
        assert label in text
    for context in ("AXT1/equispaced/4x", "AXT2/equispaced/4x", "AXFLAIR/equispaced/6x"):
        assert context in text
    assert not list(report.parent.glob(".*.tmp"))  # atomic write left nothing behind


def test_figure_count_matches_the_panels(layout, runs_dir, runs):
    figs = figures(layout)
    assert len(figs) == expected_figures(runs_dir, runs) == 2 * 3 + 1 + 1 + 3 * (3 + 2 * 2) + 2
    names = {f.name for f in figs}
    assert {"heatmap", "steps:AXFLAIR/equispaced/6x", "cost:wall_seconds", "cost:parameters"} <= names
    assert {"scarcity:psnr:AXT2/equispaced/4x", "scarcity:ssim:AXFLAIR/equispaced/6x"} <= names
    curve = layout.select_one({"name": "scarcity:psnr:AXT2/equispaced/4x"})
    assert curve.legend[0].click_policy == "hide"
    legend = [item.label.value for item in curve.legend[0].items]
    assert legend == ["zero-filled-none", "stl-varnet", "joint-varnet"]  # the method registry's order


def test_heatmap_cell_is_the_mean_gain_over_the_reference(layout, runs_dir):
    data = layout.select_one({"name": "heatmap"}).renderers[0].data_source.data

    def cell(label, context, level):
        hits = [
            i
            for i, (lab, ctx, lvl) in enumerate(zip(data["label"], data["context"], data["level"]))
            if (lab, ctx, lvl) == (label, context, level)
        ]
        assert len(hits) == 1
        return data["value"][hits[0]], data["steps"][hits[0]]

    def mean_psnr(run, context, steps):
        volumes = metrics_of(runs_dir, run)["contexts"][context]["steps"][str(steps)]["volumes"]
        return np.mean([v["psnr"] for v in volumes.values()])

    def chosen(run):
        return metrics_of(runs_dir, run)["adaptation"]["steps"]

    # seen at 0 steps; unseen at each run's step count chosen on seen validation (shown as -1)
    for context, steps, shown in (
        ("AXT2/equispaced/4x", (0, 0), 0),
        ("AXFLAIR/equispaced/6x", (chosen("stl-varnet-s1-seed0"), chosen("joint-varnet-s1-seed0")), -1),
    ):
        value, shown_steps = cell("stl-varnet", context, 1)
        gain = mean_psnr("stl-varnet-s1-seed0", context, steps[0]) - mean_psnr(
            "joint-varnet-s1-seed0", context, steps[1]
        )
        assert shown_steps == shown and value == pytest.approx(gain, abs=1e-9)
    assert cell("joint-varnet", "AXT1/equispaced/4x", 0)[0] == 0


def test_viewer_links_ranges_and_titles_slice_psnr(layout, runs_dir):
    from skimage.metrics import peak_signal_noise_ratio

    viewer = [f for f in figures(layout) if f.name.startswith("viewer:AXFLAIR/equispaced/6x:")]
    assert len({id(f.x_range) for f in viewer}) == 1 and len({id(f.y_range) for f in viewer}) == 1
    preview = next(
        p
        for p in RunStore(runs_dir / "stl-varnet-s0-seed0").read_previews()
        if p["context"] == "AXFLAIR/equispaced/6x" and p["steps"] == 2
    )
    target, pred = preview["target"], preview["pred"]
    psnr = peak_signal_noise_ratio(target, pred, data_range=target.max())
    title = layout.select_one({"name": "viewer:AXFLAIR/equispaced/6x:stl-varnet"}).title.text
    assert title == f"stl-varnet s0\n{psnr:.2f} dB"
    shown = layout.select_one({"name": "viewer:AXFLAIR/equispaced/6x:stl-varnet"}).renderers[0].data_source.data
    np.testing.assert_array_equal(shown["image"][0], pred[::-1])  # full resolution, float32, top row up
    assert shown["image"][0].dtype == np.float32


def test_missing_reference_shows_absolute_values(runs, tmp_path):
    without_joint = [r for r in runs if r.method != "joint"]
    path = write_report(without_joint, tmp_path / "r.html", reference="joint")
    text = path.read_text()
    assert "is not among the labels" in text and "absolute mean PSNR" in text
    assert "mean PSNR (dB), no reference" in text and "gain in" not in text  # the heat map's title


def test_explicit_missing_reference_and_empty_runs_are_errors(runs, tmp_path):
    with pytest.raises(MrbenchError, match=r"'maml'.*zero-filled-none, stl-varnet, joint-varnet"):
        write_report(runs, tmp_path / "r.html", reference="maml", reference_required=True)
    with pytest.raises(MrbenchError, match="no finished runs"):
        write_report([], tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_baselines_are_overlaid_as_dashed_lines(runs, tmp_path):
    results.write_summary_csv(results.summarise(results.records(runs)), tmp_path / "b" / "paper" / "summary.csv")
    baselines = results.read_baselines(tmp_path / "b")
    layout = build_layout(runs, baselines=baselines)
    legend = {item.label.value for lg in layout.select({"type": Legend}) for item in lg.items}
    assert {"baseline: joint-varnet (paper)", "baseline: stl-varnet (paper)"} <= legend
    curve = layout.select_one({"name": "scarcity:psnr:AXT1/equispaced/4x"})
    dashed = [r for r in curve.renderers if getattr(r.glyph, "line_dash", None) == [6]]  # Bokeh's "dashed"
    assert len(dashed) == 3  # one per baseline label, matched by context name


@pytest.mark.slow
@pytest.mark.browser
def test_report_renders_in_headless_chromium(report, layout, tmp_path):
    """The file opens offline in a real browser: every figure draws a canvas, the console stays clean."""
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.skip("needs chromium and chromedriver")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,3000",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # an explicit driver path: Selenium Manager never goes to the network
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        driver.get(report.resolve().as_uri())
        wanted, canvases = len(figures(layout)), 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and canvases < wanted:
            time.sleep(0.5)
            canvases = driver.execute_script(COUNT_CANVASES)
        assert canvases >= wanted
        severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert not severe
        # the whole page in one screenshot: a window as tall as the document plus the browser's frame
        height = driver.execute_script(
            "return document.documentElement.scrollHeight + window.outerHeight - window.innerHeight"
        )
        driver.set_window_size(1400, max(3000, height))
        assert driver.save_screenshot(str(tmp_path / "report.png"))
        if os.environ.get("MRBENCH_SCREENSHOT"):
            assert driver.save_screenshot(os.environ["MRBENCH_SCREENSHOT"])
    finally:
        driver.quit()


#: Bokeh 3 renders each plot into a shadow root, so canvases are counted through them
COUNT_CANVASES = """
function count(root) {
  let n = root.querySelectorAll('canvas').length;
  for (const el of root.querySelectorAll('*')) { if (el.shadowRoot) n += count(el.shadowRoot); }
  return n;
}
return count(document);
"""


def test_report_has_verdicts_with_intervals(report, runs):
    text = report.read_text()
    assert "Verdicts against the reference" in text and "95 % interval" in text
    v = results.verdicts(results.records(runs), "joint-varnet", "psnr")
    assert len(v) and set(v["verdict"]) <= {"better", "worse", "tie"}
    assert "Single seed" in text  # the fixture runs one seed: the report says what its intervals leave out
    assert "mde (80 % power)" in text and "budget \\u00d72" in text  # JSON-escaped in the document


def testseed_volume_matrix_equals_pandas_pivot_table():
    """The numpy seeds × volumes matrix is the frame pandas' pivot_table gives: repeats are
    averaged, NaN values left out, all-NaN seeds and volumes dropped, both axes sorted."""
    import pandas as pd

    rng = np.random.default_rng(3)
    n = 60
    g = pd.DataFrame(
        {"seed": rng.integers(0, 4, n), "volume": rng.choice(["v3", "v1", "v2", "v0"], n), "psnr": rng.normal(30, 2, n)}
    )
    g.loc[rng.random(n) < 0.2, "psnr"] = np.nan
    g.loc[g["volume"] == "v2", "psnr"] = np.nan  # an all-NaN volume
    g.loc[g["seed"] == 3, "psnr"] = np.nan  # an all-NaN seed
    got = results.seed_volume_matrix(g, "psnr")
    want = g.pivot_table(index="seed", columns="volume", values="psnr", aggfunc="mean")
    assert list(got.index) == [0, 1, 2] and list(got.columns) == ["v0", "v1", "v3"]
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
