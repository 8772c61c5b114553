"""Reports from the results store alone: golden aggregates, byte-identical regeneration, a well-formed HTML page."""

import base64
import io
import json
from html.parser import HTMLParser

import pytest
import typer
from matplotlib import image as mpimg
from typer.testing import CliRunner

from romer.cli.run import report_command, run_command
from romer.experiment.config_file import load_config
from romer.experiment.runner import run_experiment
from romer.report import aggregate, t_quantile, write_report
from tests.test_experiment_runner import fake_evaluator

METHODS = "methods=[clean, noisy, romer, maxnn-12.5%]"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "results.sqlite"
    config = load_config("default", ["models=[olmoe-tiny, qwenmoe-tiny]", "chip.chips=3", METHODS,
                                     "chip.t_inference=[3600, 86400]", "name=report-test"])
    run_experiment(config, path, evaluator=fake_evaluator, progress=False)
    return path


@pytest.fixture(scope="module")
def written(store, tmp_path_factory):
    """(report, folder) written once from the store."""
    folder = tmp_path_factory.mktemp("written")
    return write_report(store, folder), folder


def test_t_quantile_golden():
    for df, expected in [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423)]:
        assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)


def _golden_evaluator(table):
    def evaluate(group, names):
        for method in group.methods:
            ppl = table[method["name"]].get(group.chip["seed"])
            if method["name"] in names and ppl is not None:
                yield {"method": method["name"], "ppl": ppl, "cv": 0.1, "cv_before": 0.3, "digital_share": 0.0}
    return evaluate


def test_aggregate_golden_reduction_gap_and_interval(tmp_path):
    config = load_config("default", ["models=[olmoe-tiny]", "chip.chips=2", "methods=[clean, noisy, romer]"])
    table = {"clean": {0: 10.0, 1: 10.0}, "noisy": {0: 20.0, 1: 22.0}, "romer": {0: 15.0, 1: 16.0}}
    run_experiment(config, tmp_path / "s.sqlite", evaluator=_golden_evaluator(table), progress=False)
    rows = {r["method"]: r for r in aggregate(str(tmp_path / "s.sqlite"))}
    romer = rows["romer"]
    assert romer["chips"] == 2 and romer["ppl_mean"] == 15.5 and romer["ppl_std"] == pytest.approx(0.5 ** 0.5)
    # paired: per chip 1 − 15/20 = 25 % and 1 − 16/22 = 27.27 %, mean 26.14 %, half-width t₀.₉₇₅,₁ · (2.2727/√2)/√2
    assert romer["reduction_pct"] == pytest.approx((25 + 100 * (1 - 16 / 22)) / 2)
    assert romer["reduction_ci95"] == pytest.approx([26.1364 - 14.4386, 26.1364 + 14.4386], abs=1e-3)
    assert romer["reduction_of_means_pct"] == pytest.approx(100 * (1 - 15.5 / 21))  # 26.19 %: its own name
    assert romer["gap_recovered_pct"] == pytest.approx(50.0)  # (20 − 15)/(20 − 10) and (22 − 16)/(22 − 10)
    assert romer["gap_recovered_of_means_pct"] == pytest.approx(50.0)  # (21 − 15.5)/(21 − 10)
    assert romer["ppl_per_chip"] == [15.0, 16.0]
    assert romer["ppl_ci95"] == pytest.approx([15.5 - 6.3531, 15.5 + 6.3531], abs=1e-3)  # t₀.₉₇₅,₁·s/√2
    assert rows["noisy"]["reduction_pct"] == 0.0 and rows["clean"]["gap_recovered_pct"] == 100.0
    assert [r["method"] for r in aggregate(str(tmp_path / "s.sqlite"))] == ["clean", "noisy", "romer"]


def test_aggregate_pairs_by_chip_seed(tmp_path):
    """A method scored on chip 0 only is compared with the noisy PPL of chip 0, not the mean of chips 0 and 1."""
    config = load_config("default", ["models=[olmoe-tiny]", "chip.chips=2", "methods=[clean, noisy, romer]"])
    table = {"clean": {0: 10.0, 1: 10.0}, "noisy": {0: 20.0, 1: 30.0}, "romer": {0: 15.0}}
    with pytest.raises(RuntimeError, match="no result for romer"):
        run_experiment(config, tmp_path / "s.sqlite", evaluator=_golden_evaluator(table), progress=False)
    romer = next(r for r in aggregate(str(tmp_path / "s.sqlite")) if r["method"] == "romer")
    assert romer["chips"] == 1 and romer["ppl_ci95"] is None
    assert romer["reduction_pct"] == pytest.approx(25.0) and romer["gap_recovered_pct"] == pytest.approx(50.0)


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_report_regenerates_byte_identical(store, written, tmp_path):
    first, folder = written
    write_report(store, tmp_path)
    a, b = _files(folder), _files(tmp_path)
    assert a == b
    assert {"results.md", "results.csv", "results.json", "report.html"} <= set(a)
    names = sorted(n for n in a if n.startswith("plots/"))
    assert names == sorted(f"plots/{p.name}" for p in first.plots)
    assert any("ppl-vs-t" in n for n in names) and any("frequency-" in n for n in names)
    payload = json.loads(a["results.json"])
    assert payload["config"]["name"] == "report-test" and payload["git"]
    assert len(payload["rows"]) == 2 * 2 * 4  # models × t × methods
    row = payload["rows"][0]
    assert {"model", "method", "preset", "t", "chips", "ppl_mean", "ppl_std", "reduction_pct", "gap_recovered_pct",
            "cv_mean", "digital_share"} <= set(row)
    assert (row["model"], row["t"], row["method"], row["chips"]) == ("olmoe-tiny", 3600.0, "clean", 3)


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.images, self.cells = [], [], 0

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs))
        self.cells += tag == "td"


def test_html_page_is_self_contained_with_valid_pngs(written):
    report, folder = written
    page = _Page()
    page.feed((folder / "report.html").read_text(encoding="utf-8"))
    page.close()
    assert page.tags.count("table") == 1 + 2  # the full table + one method × model grid per t
    assert page.cells == len(report.rows) * (13 + 1)  # every row once in the full table, once as a grid cell
    assert len(page.images) == len(report.plots) > 0
    for attrs in page.images:
        prefix = "data:image/png;base64,"
        assert attrs["src"].startswith(prefix)
        png = base64.b64decode(attrs["src"][len(prefix):], validate=True)
        pixels = mpimg.imread(io.BytesIO(png), format="png")
        assert pixels.shape[:2] == (int(attrs["height"]), int(attrs["width"])) and pixels.shape[0] > 100
    assert "src=\"http" not in (folder / "report.html").read_text() and "<link" not in page.tags


def test_cli_run_then_report(tmp_path):
    app = typer.Typer()
    app.command("run")(run_command)
    app.command("report")(report_command)
    cli = CliRunner(env={"COLUMNS": "250"})
    args = ["run", "default", "--set", "models=[olmoe-tiny]", "--set", "chip.chips=2", "--set", METHODS,
            "--out", str(tmp_path / "run"), "--json", str(tmp_path / "r.json"),
            "--evaluator", "tests.test_experiment_runner:fake_evaluator"]
    result = cli.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "8 trials computed" in result.output and "romer" in result.output
    assert (tmp_path / "run" / "results.sqlite").is_file() and (tmp_path / "run" / "report.html").is_file()
    assert json.loads((tmp_path / "r.json").read_text())["rows"][0]["chips"] == 2
    result = cli.invoke(app, args)
    assert result.exit_code == 0 and "0 trials computed, 8 already stored" in result.output
    result = cli.invoke(app, ["report", str(tmp_path / "run"), "--out", str(tmp_path / "again")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "again" / "results.md").read_bytes() == (tmp_path / "run" / "results.md").read_bytes()
    result = cli.invoke(app, ["report", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "no results store" in result.output
