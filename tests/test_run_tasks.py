"""Zero-shot accuracy and datasets in `romer run`: eval.tasks reach the rows, tables and HTML; calibration text is
never the evaluation text."""

import json

import pytest

from romer.errors import UserError
from romer.experiment.config_file import load_config
from romer.experiment.runner import run_experiment
from romer.report import write_report
from romer.report.aggregate import aggregate_rows
from romer.report.tables import grid_cell, markdown, to_csv


def trial(method, kind, seed, ppl, acc=None):
    metrics = {"ppl": ppl, "tokens": 100}
    if acc is not None:
        metrics["tasks"] = {"romer_cloze": {"acc": acc, "acc_stderr": 0.1, "samples": 10}}
    return {"model": "m", "preset": "pcm", "t_inference": 86400.0, "placement": "moe", "method": method,
            "method_kind": kind, "chip_seed": seed, "ppl": ppl, "metrics": metrics}


def test_accuracy_is_averaged_over_chips_into_its_own_columns():
    rows = aggregate_rows([trial("clean", "clean", 0, 10.0, 0.6), trial("clean", "clean", 1, 10.0, 0.6),
                           trial("noisy", "noisy", 0, 20.0, 0.3), trial("noisy", "noisy", 1, 22.0, 0.5)])
    noisy = next(r for r in rows if r["method"] == "noisy")
    # mean of 0.3 and 0.5 is 0.4; their sample std is |0.5 − 0.3| / √2 = 0.1414
    assert noisy["accuracy"]["romer_cloze acc"]["mean"] == pytest.approx(0.4)
    assert noisy["accuracy"]["romer_cloze acc"]["std"] == pytest.approx(0.2 / 2 ** 0.5)
    table = markdown(rows)
    assert "| romer_cloze acc (%) |" in table.splitlines()[0] and "| 40.0 ± 14.1 |" in table
    assert "romer_cloze acc mean" in to_csv(rows).splitlines()[0]
    assert grid_cell(noisy)[1] == "reference" and "romer_cloze acc 60.0 %" in grid_cell(rows[0])[1]


def test_rows_without_tasks_have_no_accuracy_columns():
    rows = aggregate_rows([trial("noisy", "noisy", 0, 20.0)])
    assert "accuracy" not in rows[0] and "(%)" not in markdown(rows)


@pytest.mark.parametrize("overrides, message", [
    (["calibration.split=test"], "calibration and evaluation read the same text"),
    (["eval.dataset=nowhere"], "unknown dataset 'nowhere'"),
    (["eval.split=dev"], "has no split 'dev'"),
    (["eval.task_data={arc_easy: x.jsonl}"], "task_data names task(s) not in tasks"),
])
def test_bad_data_settings_are_refused(overrides, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config("default", overrides)


def test_run_scores_zero_shot_tasks_on_every_method(tmp_path):
    config = load_config("default", [
        "models=[olmoe-tiny]", "chip.chips=1", "chip.presets=[{preset: gaussian, overrides: {eta: 0.2}}]",
        "methods=[clean, noisy, recalibration, oracle routing]", "eval.max_tokens=512", "eval.window=128",
        "calibration.sequences=2", "calibration.window=128", "eval.tasks=[romer_cloze]", "eval.task_limit=8",
        "name=tasks-test"])
    store = tmp_path / "results.sqlite"
    run_experiment(config, store, progress=False)
    report = write_report(store, tmp_path / "report")
    rows = {row["method"]: row for row in report.rows}
    for method in ("clean", "noisy", "recalibration"):
        acc = rows[method]["accuracy"]["romer_cloze acc"]
        assert acc["chips"] == 1 and abs(acc["mean"] * 8 - round(acc["mean"] * 8)) < 1e-9  # k of 8 items
    assert "accuracy" not in rows["oracle routing"]  # oracle routing replays the evaluation tokens' routing
    assert "romer_cloze acc (%)" in (tmp_path / "report" / "results.md").read_text()
    assert "romer_cloze acc" in (tmp_path / "report" / "report.html").read_text()
    stored = json.loads((tmp_path / "report" / "results.json").read_text())
    assert stored["config"]["eval"]["tasks"] == ["romer_cloze"]


def test_routing_statistics_count_only_the_scored_tokens_not_the_tasks(tmp_path):
    """The noisy and recalibrated rows' load CV is the same with and without zero-shot tasks: the task items'
    tokens never enter the routing record of the PPL text."""
    common = ["models=[olmoe-tiny]", "chip.chips=1", "chip.presets=[{preset: gaussian, overrides: {eta: 0.2}}]",
              "methods=[clean, noisy, recalibration]", "eval.max_tokens=512", "eval.window=128",
              "calibration.sequences=2", "calibration.window=128"]
    cv = {}
    for label, extra in (("tasks", ["eval.tasks=[romer_cloze]", "eval.task_limit=8"]), ("none", [])):
        store = tmp_path / f"{label}.sqlite"
        run_experiment(load_config("default", [*common, *extra, f"name={label}"]), store, progress=False)
        cv[label] = {row["method"]: row["cv_mean"] for row in write_report(store, tmp_path / label).rows}
    assert cv["tasks"]["noisy"] == pytest.approx(cv["none"]["noisy"], rel=1e-12)
    assert cv["tasks"]["recalibration"] == pytest.approx(cv["none"]["recalibration"], rel=1e-12)
