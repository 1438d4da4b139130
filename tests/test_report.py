"""The HTML report and comparison: written at the end of training, self-contained, with the run's numbers."""

import json
import re

import pytest
from typer.testing import CliRunner

from tests.helpers import read_lines, tiny_recipe
from thinktune.cli import app
from thinktune.pipeline import train

STEPS = ["train.steps=4", "eval.before=true", "eval.after=true", "eval.every=2", "data.eval_size=4"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("runs")
    for seed in (0, 1):
        train(tiny_recipe(folder, tiny_model_dir, *STEPS, f"train.seed={seed}", f"run.name=seed{seed}"))
    return folder / "seed0", folder / "seed1"


def self_contained(html: str) -> bool:
    """Nothing fetched from elsewhere: no script, no external stylesheet, image or font."""
    return "<script" not in html and not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)


def test_train_writes_a_self_contained_report_with_the_runs_numbers(two_runs):
    run = two_runs[0]
    html = (run / "report.html").read_text()
    assert self_contained(html)
    assert html.count("<svg") >= 8  # held-out curve, reward, and the training curves that moved
    assert "Reward (mean ± std over the step" in html and "Held-out accuracy by step" in html
    assert "KL to the reference: 0 at every step" in html  # no KL term: said, not drawn
    last = read_lines(run / "eval_curve.jsonl")[-1]
    assert f"{last['accuracy']:.3f}" in html
    assert "yes_fraction" in html  # the recipe, shown as trained
    before, after = (json.loads((run / f"eval_{label}.json").read_text())["samples"] for label in ("before", "after"))
    fixed = sum(a["correct"] > b["correct"] for b, a in zip(before, after, strict=True))
    assert f"{fixed} fixed" in html
    assert '"torch_threads"' not in html and "torch_threads" in html  # environment.json, as a table


def test_compare_overlays_the_runs_and_tables_them_side_by_side(two_runs, tmp_path):
    out = tmp_path / "both.html"
    result = CliRunner().invoke(app, ["compare", *map(str, two_runs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    html = out.read_text()
    assert self_contained(html)
    assert "<th>seed0</th><th>seed1</th>" in html
    legends = re.findall(r"<svg.*?</svg>", html, flags=re.S)
    assert legends and all("seed0" in svg and "seed1" in svg for svg in legends)  # every chart has both runs


def test_report_of_a_folder_that_is_not_a_run_is_one_clear_line(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "not a thinktune run directory (no recipe.yaml)" in result.output


def test_the_report_and_the_comparison_render_in_a_real_browser(two_runs, tmp_path):
    """Headless Chromium over its DevTools protocol: no console error, every plot laid out and drawn, and a
    screenshot that is not blank."""
    from io import BytesIO

    from PIL import Image

    from tests.browser import DevTools, chromium

    if chromium() is None:
        pytest.skip("no Chromium: `make test` installs Debian's chromium where apt-get can; it could not here")
    comparison = tmp_path / "both.html"
    CliRunner().invoke(app, ["compare", *map(str, two_runs), "--out", str(comparison)])
    browser = DevTools()
    try:
        pages = {page: browser.check(page) for page in (two_runs[0] / "report.html", comparison)}
    finally:
        browser.close()
    for page, seen in pages.items():
        assert seen.errors == [], page
        assert len(seen.plots) == page.read_text().count("<svg")
        assert all(p["width"] > 300 and p["height"] > 150 and p["shapes"] > 10 for p in seen.plots), seen.plots
        image = Image.open(BytesIO(seen.screenshot)).convert("RGB")
        colours = image.getcolors(maxcolors=1 << 20)
        background = max(colours)[0] / (image.width * image.height)
        assert len(colours) > 100 and background < 0.9  # text, lines and shading, not one flat colour
