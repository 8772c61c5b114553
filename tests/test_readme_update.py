"""scripts/update_readme.py: README sections rewritten between their markers, atomically, from rendered results."""

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


def test_missing_results_write_nothing_and_exit_1(updater, tmp_path, capsys):
    readme = tmp_path / "README.md"
    text = "<!-- main-result:begin -->\nold\n<!-- main-result:end -->\n<!-- routing:begin -->\nold\n<!-- routing:end -->\n"
    readme.write_text(text, encoding="utf-8")
    assert updater.main(["main-result", "routing"], root=tmp_path) == 1  # main-result renders; routing has no input
    assert "run `make routing-study`" in capsys.readouterr().err
    assert readme.read_text(encoding="utf-8") == text


def test_an_unknown_section_is_refused(updater, tmp_path):
    with pytest.raises(SystemExit):
        updater.main(["nonsense"], root=tmp_path)


def row(model, method, kind, placement, ppl, cv, **extra):
    return {"model": model, "method": method, "kind": kind, "placement": placement, "tokens": 1000, "chips": 3,
            "seeds": [0, 1, 2], "ppl_mean": ppl, "cv_mean": cv, **extra}


def test_main_result_table_from_a_tiny_report(updater, tmp_path):
    rows = [row("olmoe-tiny", "clean", "clean", "moe", 10.0, 0.5),
            row("qwenmoe-tiny", "clean", "clean", "moe", 9.0, 0.3),
            row("olmoe-tiny", "P1", "recalibrate", "moe", 12.3456, 0.4, ppl_std=0.5, reduction_pct=-12.34,
                gap_recovered_pct=56.7, cv_before_mean=0.8, digital_share=0.05),
            row("olmoe-tiny", "clean", "clean", "all", 11.0, 0.25)]
    (tmp_path / "results/main").mkdir(parents=True)
    (tmp_path / "results/main/results.json").write_text(json.dumps({"rows": rows}))
    assert updater.SECTIONS["main-result"](tmp_path) == (
        "**`romer run main --out results/main`**, test split, placement `moe` — 1000 tokens, 3 chips (seeds 0…), "
        "window 512:\n\n"
        "| method | olmoe-tiny | qwenmoe-tiny |\n"
        "|---|---:|---:|\n"
        "| clean | 10.00 (CV 0.50) | 9.00 (CV 0.30) |\n"
        "| P1 | 12.35 ± 0.50 · -12.3 % · gap 57 % · CV 0.80→0.40 · dig. 5.0 % | — |\n"
        "\n"
        "**`romer run main --out results/main`**, test split, placement `all` — 1000 tokens, 3 chips (seeds 0…), "
        "window 512:\n\n"
        "| method | olmoe-tiny |\n"
        "|---|---:|\n"
        "| clean | 11.00 (CV 0.25) |")


def test_a_config_not_run_yet_renders_a_placeholder(updater, tmp_path):
    assert updater.SECTIONS["main-result"](tmp_path) == (
        "_main: not run yet (`romer run main --out results/main`)._\n\n"
        "_main: not run yet (`romer run main --out results/main`)._")
