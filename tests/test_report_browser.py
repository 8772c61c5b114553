"""The HTML report rendered by a real browser (headless Debian Chromium): the method × model grids and the full
table have the expected rows and columns, the grids fit the window, every embedded plot decodes, and a screenshot
is taken."""

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from romer.experiment.config_file import load_config
from romer.experiment.runner import run_experiment
from romer.report import write_report
from tests.test_experiment_runner import fake_evaluator

MODELS, PLACEMENTS, METHODS = ["olmoe-tiny", "qwenmoe-tiny"], ["moe", "experts"], ["clean", "noisy", "romer"]
WIDTH, HEIGHT = 1400, 2400
TIMEOUT_S = 180
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--window-size={WIDTH},{HEIGHT}", "--virtual-time-budget=10000")

# Once the page (and so every data: image) has loaded, write what the layout engine saw onto the elements.
PROBE = """<script>
window.addEventListener("load", () => {
  for (const img of document.images) {
    img.dataset.naturalWidth = img.naturalWidth;
    img.dataset.naturalHeight = img.naturalHeight;
  }
  for (const table of document.querySelectorAll("table")) {
    table.dataset.bodyRows = table.tBodies[0].rows.length;
    table.dataset.columns = table.tHead.rows[0].cells.length;
    table.dataset.renderedWidth = Math.ceil(table.getBoundingClientRect().width);
    table.dataset.visible = table.checkVisibility();
  }
  document.body.dataset.probed = "yes";
});
</script>
"""


def chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if path is None:
        pytest.skip("chromium is not installed (make chromium, or apt-get install chromium): browser check not run")
    return path


def run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([binary, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=True)


class _Dom(HTMLParser):
    """The attributes of every <table> and <img> in a dumped DOM, and <body>'s."""

    def __init__(self):
        super().__init__()
        self.tables, self.images, self.body = [], [], {}

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append(dict(attrs))
        elif tag == "img":
            self.images.append(dict(attrs))
        elif tag == "body":
            self.body = dict(attrs)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """(report, dumped DOM, screenshot path) of a report on 2 models × 2 placements × 3 methods, 2 chips."""
    binary = chromium()
    folder = tmp_path_factory.mktemp("browser")
    config = load_config("default", [f"models=[{', '.join(MODELS)}]", f"chip.placements=[{', '.join(PLACEMENTS)}]",
                                     "chip.t_inference=[86400]", "chip.chips=2", f"methods=[{', '.join(METHODS)}]",
                                     "name=browser-test"])
    run_experiment(config, folder / "results.sqlite", evaluator=fake_evaluator, progress=False)
    report = write_report(folder / "results.sqlite", folder / "report")
    html = report.paths["html"].read_text(encoding="utf-8")
    probed = folder / "probed.html"
    probed.write_text(html.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    screenshot = folder / "report.png"
    run_chromium(binary, folder / "profile-shot", f"--screenshot={screenshot}", report.paths["html"].as_uri())
    dump = run_chromium(binary, folder / "profile-dom", "--dump-dom", probed.as_uri()).stdout
    dom = _Dom()
    dom.feed(dump)
    dom.close()
    return report, dom, screenshot


def test_tables_render_with_expected_rows(rendered):
    _, dom, _ = rendered
    assert dom.body.get("data-probed") == "yes", "the probe script did not run"
    grids = [t for t in dom.tables if t.get("class") == "grid"]
    full = [t for t in dom.tables if t.get("class") != "grid"]
    assert len(grids) == len(PLACEMENTS) and len(full) == 1  # one grid per (preset, placement, t) setting
    for table in grids:
        assert int(table["data-body-rows"]) == len(METHODS) and int(table["data-columns"]) == 1 + len(MODELS)
        assert table["data-visible"] == "true" and 0 < int(table["data-rendered-width"]) <= WIDTH  # fits the window
    assert int(full[0]["data-body-rows"]) == len(MODELS) * len(PLACEMENTS) * len(METHODS)
    assert int(full[0]["data-columns"]) == 13
    assert full[0]["data-visible"] == "false"  # collapsed in its <details> until opened


def test_every_plot_renders(rendered):
    report, dom, _ = rendered
    assert len(dom.images) == len(report.plots) > 0
    for image in dom.images:
        assert int(image["data-natural-width"]) == int(image["width"]) > 0
        assert int(image["data-natural-height"]) == int(image["height"]) > 0


def test_screenshot_is_a_png(rendered):
    _, _, screenshot = rendered
    data = screenshot.read_bytes()
    assert len(data) > 10_000 and data[:8] == b"\x89PNG\r\n\x1a\n"
