"""The setup line every results table carries (romer.report.setup): precision, device, versions, text, chips."""

from romer.report import tables
from romer.report.setup import setup_line


def test_setup_line_states_precision_device_versions_text_chips_and_estimator():
    config = {"eval": {"dataset": "bundled", "split": "test", "max_tokens": 16384, "window": 512,
                       "dtype": "bfloat16", "device": "cuda", "weights_dtype": "float32"}}
    versions = {"torch": "2.11.0", "transformers": "5.17.0", "romer": "0.1.0"}
    rows = [{"chips": 5, "seeds": [0, 1, 2, 3, 4]}, {"chips": 5, "seeds": [0, 1, 2, 3, 4]}]
    assert setup_line(config, versions, rows) == (
        "Setup: bundled test, shuffled order, first 16,384 tokens, windows of 512, bfloat16 on cuda (weights float32)"
        " · torch 2.11.0 · transformers 5.17.0 · 5 chips (seeds 0–4) · reductions paired by chip (mean of per-chip "
        "figures, 95 % Student-t interval).")


def test_setup_line_of_an_old_store_without_eval_settings_says_the_defaults_and_mixed_chip_counts():
    rows = [{"chips": 3, "seeds": [0, 1, 2], "tokens": 1000}, {"chips": 1, "seeds": [0], "tokens": 1000}]
    line = setup_line(None, {"torch": "2.13.0+cpu"}, rows)
    assert line.startswith("Setup: bundled test, shuffled order, first 1,000 tokens, windows of 512, float32 on cpu · "
                           "torch 2.13.0+cpu · 1/3 chips (seeds 0–2) · ")
    assert "transformers" not in line


def test_results_markdown_puts_the_setup_under_the_title():
    text = tables.markdown([], "romer report: x", "Setup: here.")
    assert text.splitlines()[:4] == ["# romer report: x", "", "Setup: here.", ""]
