"""`romer eval` over datasets and zero-shot tasks: its numbers equal the library's on the same text, accuracy is
summarised over chips, and bad data options are one-line errors."""

import json

import pytest
from typer.testing import CliRunner

from romer.cli.main import app
from romer.eval import document_perplexity, perplexity
from romer.models import load_model

runner = CliRunner()
PASSAGE = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
           "want of a wife. However little known the feelings or views of such a man may be on his first entering "
           "a neighbourhood, this truth is so well fixed in the minds of the surrounding families.")


@pytest.fixture(scope="module")
def olmoe():
    return load_model("olmoe-tiny")


def invoke(*args):
    result = runner.invoke(app, list(args))
    return result


def test_eval_on_a_text_file_equals_the_library_perplexity(tmp_path, olmoe):
    path = tmp_path / "mine.txt"
    path.write_text(PASSAGE * 4)
    result = invoke("eval", "--model", "olmoe-tiny", "--dataset", "text", "--data-path", str(path),
                    "--window", "64", "--json", "-")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    expected = perplexity(*olmoe, PASSAGE * 4, window=64)
    assert payload["ppl"] == pytest.approx(expected.ppl, rel=1e-9)
    assert payload["tokens"] == expected.tokens and payload["ppl_convention"] == "windows"


def test_eval_documents_convention_scores_each_document_on_its_own(tmp_path, olmoe):
    path = tmp_path / "docs.jsonl"
    docs = [PASSAGE, PASSAGE[::-1].title()]
    path.write_text("\n".join(json.dumps({"text": d}) for d in docs) + "\n")
    result = invoke("eval", "--model", "olmoe-tiny", "--dataset", "text", "--data-path", str(path),
                    "--ppl", "documents", "--window", "32", "--json", "-")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    expected = document_perplexity(*olmoe, docs, max_length=32)
    assert payload["word_ppl"] == pytest.approx(expected.word_ppl, rel=1e-9)
    assert payload["ppl_convention"] == "documents"


def test_eval_tasks_over_two_chips_reports_mean_and_std_of_the_per_chip_accuracy():
    result = invoke("eval", "--model", "olmoe-tiny", "--max-tokens", "700", "--tasks", "romer_cloze",
                    "--limit", "12", "--preset", "gaussian", "--set", "chip.overrides.eta=0.2", "--chips", "2",
                    "--json", "-")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    acc = payload["tasks"]["romer_cloze"]["acc"]
    assert payload["tasks"]["romer_cloze"]["samples"] == 12 and len(acc["per_chip"]) == 2
    # accuracies of 12 items are multiples of 1/12
    assert all(abs(v * 12 - round(v * 12)) < 1e-9 for v in acc["per_chip"])
    a, b = acc["per_chip"]
    assert acc["mean"] == pytest.approx((a + b) / 2) and acc["std"] == pytest.approx(abs(a - b) / 2 ** 0.5)
    assert len(acc["stderr_per_chip"]) == 2 and payload["chips"] == 2


@pytest.mark.parametrize("args, message", [
    (["--dataset", "nope"], "unknown dataset 'nope'"),
    (["--dataset", "text", "--data-path", "/no/such/file.txt"], "/no/such/file.txt"),
    (["--tasks", "romer_cloze", "--task-data", "romer_cloze"], "--task-data takes TASK=PATH"),
    (["--task-data", "arc_easy=x.jsonl"], "not asked for"),
    (["--ppl", "sentences"], "unknown perplexity convention"),
    (["--tasks", "arc_easy"], "arc_easy"),
])
def test_bad_data_options_are_one_line_errors(args, message):
    result = invoke("eval", "--model", "olmoe-tiny", "--max-tokens", "500", *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_a_chip_that_breaks_the_model_is_an_error_not_a_nan(tmp_path):
    """Gaussian η = 1e30 overflows the weights: one line, exit 2, no JSON written (it used to print PPL NaN, exit 0)."""
    out = tmp_path / "ppl.json"
    result = invoke("eval", "--model", "olmoe-tiny", "--preset", "gaussian", "--set", "chip.overrides.eta=1e30",
                    "--chips", "1", "--max-tokens", "300", "--json", str(out))
    assert result.exit_code == 2, result.output
    assert "perplexities are not finite" in result.output and not out.exists()
