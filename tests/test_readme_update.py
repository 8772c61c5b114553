"""scripts/update_readme.py: generated sections of README.md and docs/*.md rewritten between their markers, each in
its own page, atomically, from rendered results."""

import importlib
import json
import os
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
README = "# Title\nintro\n<!-- a:begin -->\nold a\n<!-- a:end -->\nmiddle\n<!-- b:begin -->\nold b\n<!-- b:end -->\nend\n"


@pytest.fixture
def updater(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    return importlib.import_module("update_readme")


@pytest.fixture
def readme(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(README, encoding="utf-8")
    return path


def test_a_section_is_replaced_and_the_rest_kept(updater, readme):
    updater.write_sections(readme, {"b": "new b\n| x |"})
    assert readme.read_text(encoding="utf-8") == (
        "# Title\nintro\n<!-- a:begin -->\nold a\n<!-- a:end -->\nmiddle\n"
        "<!-- b:begin -->\nnew b\n| x |\n<!-- b:end -->\nend\n")


def test_a_missing_marker_is_an_error_naming_it(updater, readme):
    with pytest.raises(ValueError, match="<!-- c:begin -->"):
        updater.write_sections(readme, {"c": "text"})
    assert readme.read_text(encoding="utf-8") == README


def test_a_failed_write_leaves_the_readme_whole(updater, readme, monkeypatch):
    def crash(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        updater.write_sections(readme, {"a": "new a"})
    assert readme.read_text(encoding="utf-8") == README
    assert [p.name for p in readme.parent.iterdir()] == ["README.md"]


PAGES = {"key-result": "README.md", "zoo": "docs/zoo.md", "sensitivity": "docs/chips.md",
         "routing": "docs/routing.md", "main-result": "docs/results.md", "ablations": "docs/results.md",
         "regime": "docs/regime-map.md", "replacement": "docs/regime-map.md", "depth": "docs/regime-map.md"}


def pages(root: Path, names: list[str]) -> dict[Path, str]:
    """Each named section's page under ``root`` with its marker pair (several sections may share a page)."""
    texts: dict[Path, str] = {}
    for name in names:
        path = root / PAGES[name]
        texts[path] = texts.get(path, "# page\n") + f"<!-- {name}:begin -->\nold\n<!-- {name}:end -->\n"
    for path, text in texts.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return texts


def test_every_section_names_its_page(updater):
    assert {name: section.page for name, section in updater.SECTIONS.items()} == PAGES
    assert updater.page("run-time", Path("/r")) == Path("/r/docs/experiments.md")
    assert updater.page("real-size", Path("/r")) == Path("/r/benchmarks/README.md")


def test_missing_results_write_nothing_and_exit_1(updater, tmp_path, capsys):
    texts = pages(tmp_path, ["main-result", "routing"])
    assert updater.main(["main-result", "routing"], root=tmp_path) == 1  # main-result renders; routing has no input
    assert "run `make routing-study`" in capsys.readouterr().err
    assert {path: path.read_text(encoding="utf-8") for path in texts} == texts


def test_a_page_without_its_markers_writes_nothing_and_exits_1(updater, tmp_path, capsys):
    texts = pages(tmp_path, ["main-result", "key-result"])
    (tmp_path / "README.md").write_text("# no markers\n", encoding="utf-8")
    texts[tmp_path / "README.md"] = "# no markers\n"
    assert updater.main(["main-result", "key-result"], root=tmp_path) == 1  # both render (placeholders)
    assert "<!-- key-result:begin -->" in capsys.readouterr().err
    assert {path: path.read_text(encoding="utf-8") for path in texts} == texts  # docs/results.md untouched too


def test_each_section_is_written_to_its_page(updater, tmp_path, capsys):
    pages(tmp_path, ["main-result", "key-result", "ablations"])
    assert updater.main(["main-result", "key-result", "ablations"], root=tmp_path) == 0
    results = (tmp_path / "docs/results.md").read_text(encoding="utf-8")
    readme = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "_main: not run yet (`romer run main --out results/main`)._" in results
    assert "_ablations: not run yet" in results and "old" not in results
    assert readme == ("# page\n<!-- key-result:begin -->\n_main: not run yet (`make main-result`)._\n"
                      "<!-- key-result:end -->\n")
    assert "updated README.md: key-result" in capsys.readouterr().out


def test_an_unknown_section_is_refused(updater, tmp_path):
    with pytest.raises(SystemExit):
        updater.main(["nonsense"], root=tmp_path)


def row(model, method, kind, placement, ppl, cv, **extra):
    return {"model": model, "method": method, "kind": kind, "placement": placement, "tokens": 1000, "chips": 3,
            "seeds": [0, 1, 2], "ppl_mean": ppl, "cv_mean": cv, "preset": "pcm×10", "t": 86400.0, **extra}


def updater_note(updater) -> str:
    """The estimator note every results table carries (its wording is not what these tests check)."""
    import importlib

    return importlib.import_module("readme_sections.results").ESTIMATOR_NOTE


# The setup line of a results.json holding rows alone (no config, no versions): 1000 tokens, seeds 0–2.
SETUP = ("Setup: bundled test, shuffled order, first 1,000 tokens, windows of 512, float32 on cpu · 3 chips "
         "(seeds 0–2) · reductions paired by chip (mean of per-chip figures, 95 % Student-t interval).")


def test_main_result_table_from_a_tiny_report(updater, tmp_path):
    rows = [row("olmoe-tiny", "clean", "clean", "moe", 10.0, 0.5),
            row("qwenmoe-tiny", "clean", "clean", "moe", 9.0, 0.3),
            row("olmoe-tiny", "P1", "recalibrate", "moe", 12.3456, 0.4, ppl_std=0.5, reduction_pct=-12.34,
                reduction_ci95=[-20.0, -4.5], gap_recovered_pct=56.7, cv_before_mean=0.8, digital_share=0.05),
            row("qwenmoe-tiny", "P1", "recalibrate", "moe", 8.5, 0.2, ppl_std=0.1, reduction_pct=None,
                reduction_of_means_pct=3.25, gap_recovered_pct=None, gap_recovered_of_means_pct=40.4,
                cv_before_mean=0.5, digital_share=0.0),
            row("olmoe-tiny", "clean", "clean", "all", 11.0, 0.25)]
    (tmp_path / "results/main").mkdir(parents=True)
    (tmp_path / "results/main/results.json").write_text(json.dumps({"rows": rows}))
    note = updater_note(updater)
    assert updater.SECTIONS["main-result"].render(tmp_path) == (
        f"**`romer run main --out results/main`**, test split, placement `moe`. {SETUP} {note}\n\n"
        "| method | olmoe-tiny | qwenmoe-tiny |\n"
        "|---|---:|---:|\n"
        "| clean | 10.00 (CV 0.50) | 9.00 (CV 0.30) |\n"
        "| P1 | 12.35 ± 0.50 · -12.3 % [-20.0, -4.5] · gap 57 % · CV 0.80→0.40 · dig. 5.0 % | "
        "8.50 ± 0.10 · — · gap — · CV 0.50→0.20 |\n"
        "\n"
        f"**`romer run main --out results/main`**, test split, placement `all`. {SETUP} {note}\n\n"
        "| method | olmoe-tiny |\n"
        "|---|---:|\n"
        "| clean | 11.00 (CV 0.25) |")


def test_a_config_not_run_yet_renders_a_placeholder(updater, tmp_path):
    assert updater.SECTIONS["main-result"].render(tmp_path) == (
        "_main: not run yet (`romer run main --out results/main`)._\n\n"
        "_main: not run yet (`romer run main --out results/main`)._")


def test_key_result_from_a_tiny_report(updater, tmp_path):
    rows = [row("olmoe-tiny", "clean", "clean", "moe", 10.0, 0.5),
            row("olmoe-tiny", "noisy", "noisy", "moe", 14.0, 0.8, ppl_std=0.25),
            row("olmoe-tiny", "romer", "romer", "moe", 13.0, 0.6, ppl_std=0.5, reduction_pct=7.14),
            row("olmoe-tiny", "bias balancing", "balance", "moe", 13.5, 0.3, ppl_std=0.5, reduction_pct=3.5),
            row("olmoe-tiny", "clean", "clean", "all", 11.0, 0.25)]
    (tmp_path / "results/accuracy").mkdir(parents=True)
    (tmp_path / "results/accuracy/results.json").write_text(json.dumps({"rows": rows}))
    (tmp_path / "results/regime-map").mkdir(parents=True)
    (tmp_path / "results/regime-map/cells.json").write_text(json.dumps({"headline": {"romer": {"reduction_pct": {
        "cells": 12, "up_to": 55.55, "up_to_cell": "olmoe-tiny · pcm×50 · moe", "typical": 0.25, "hurts": []}}}}))
    assert updater.SECTIONS["key-result"].render(tmp_path) == (
        "Test perplexity (lower is better) on the default chip — pcm×10, t = 1 day, MoE blocks analog — mean ± std "
        f"over 3 chips; in brackets the reduction against noisy, paired by chip. {SETUP} From `romer run accuracy "
        f"--out results/accuracy`; regenerate: `make main-result`. {updater_note(updater)}\n\n"
        "| method | olmoe-tiny |\n"
        "|---|---:|\n"
        "| clean | 10.00 |\n"
        "| noisy | 14.00 ± 0.25 |\n"
        "| romer | 13.00 ± 0.50 (+7.1 %) |\n\n"
        "Over the 12 distinct cells of the regime map (noise scale, placement, mapping, time) ROMER lowers PPL by up "
        "to 55.5 % (the best cell: olmoe-tiny · pcm×50 · moe) and by +0.2 % in the median cell. Regenerate: "
        "`make regime-map`.")


def test_romer_against_its_parts_is_paired_by_chip(updater):
    """Per chip 1 − 9/10 = 10 % and 1 − 18/20 = 10 %: mean 10 %, zero spread."""
    import importlib

    results = importlib.import_module("readme_sections.results")
    rows = [{"model": "olmoe-tiny", "method": "romer", "seeds": [0, 1], "ppl_per_chip": [9.0, 18.0]},
            {"model": "olmoe-tiny", "method": "recalibration", "seeds": [0, 1], "ppl_per_chip": [10.0, 20.0]},
            {"model": "olmoe-tiny", "method": "replacement", "seeds": [0, 1], "ppl_per_chip": [None, 20.0]}]
    line = results.parts_line(rows)
    assert "vs recalibration: olmoe-tiny +10.00 % [+10.00, +10.00]" in line and "vs replacement" not in line
    assert results.parts_line([{**r, "ppl_per_chip": None} for r in rows]) == ""


def test_replacement_table_pairs_each_comparison_by_chip(updater, tmp_path):
    """Chip by chip, split halves replica's PPL on chip 0 and takes a quarter off on chip 1: +50 % and +25 %,
    mean 37.5 %, t-interval 37.5 ± 12.706 · 12.5 = [-121.3, +196.3] (2 chips, sd 17.68, se 12.5)."""
    def r(method, ppl, cv, thr=None):
        return {"model": "olmoe-tiny", "preset": "pcm×10", "placement": "moe", "method": method, "seeds": [0, 1],
                "ppl_per_chip": ppl, "ppl_mean": sum(ppl) / 2, "cv_mean": cv, "throughput_mean": thr, "chips": 2,
                "tokens": 1000}
    rows = [r("noisy", [20.0, 40.0], 0.5, 0.6), r("replica", [20.0, 40.0], 0.6, 0.6), r("split", [10.0, 30.0], 0.3, 0.9)]
    (tmp_path / "results/regime-replacement").mkdir(parents=True)
    (tmp_path / "results/regime-replacement/results.json").write_text(json.dumps({"rows": rows}))
    table = updater.SECTIONS["replacement"].render(tmp_path).splitlines()[-1]
    assert table == ("| olmoe-tiny | pcm×10 | 30.0 · CV 0.50 · 0.60× | +0.0 [+0.0, +0.0] · CV 0.60 · 0.60× | "
                     "+37.5 [-121.3, +196.3] · CV 0.30 · 0.90× | +37.5 [-121.3, +196.3] | — | — | — |")
