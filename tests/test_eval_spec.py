"""One evaluation spec: the text it resolves (order, token budget) checked by hand, its refusals, and the same clean
PPL from `romer eval` and `romer run` when both are asked for the same text."""

import json

import pytest
import torch
from typer.testing import CliRunner

from romer.cli.main import app
from romer.data import load_documents, load_tokenizer
from romer.errors import UserError
from romer.eval.spec import EvalSpec, text_label, token_prefix


def test_shuffled_order_is_a_fixed_permutation_of_the_split_documents():
    documents = [d.text for d in load_documents("validation")]
    order = torch.randperm(len(documents), generator=torch.Generator().manual_seed(0)).tolist()
    spec = EvalSpec(split="validation")
    assert spec.resolved_order == "shuffled"
    assert spec.documents() == [documents[i] for i in order]
    assert spec.full_text() == "\n\n".join(documents[i] for i in order)
    assert EvalSpec(split="validation", order="source").full_text() == "\n\n".join(documents)


def test_order_defaults_to_source_for_a_users_dataset(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("first line\nsecond line\n")
    spec = EvalSpec(dataset="text", data_path=str(path))
    assert spec.resolved_order == "source" and spec.describe()["order"] == "source"


def test_token_prefix_cuts_at_the_nth_token_boundary():
    tokenizer = load_tokenizer()
    text = "In the beginning God created the heaven and the earth."
    ids = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids
    for n in (1, 3, len(ids) - 1):
        prefix = token_prefix(tokenizer, text, n)
        assert tokenizer.backend_tokenizer.encode(prefix, add_special_tokens=False).ids == ids[:n]
        assert text.startswith(prefix)
    assert token_prefix(tokenizer, text, len(ids) + 5) == text and token_prefix(tokenizer, text, None) == text


@pytest.mark.parametrize("fields, message", [
    ({"order": "random"}, "unknown document order"),
    ({"ppl": "rolling"}, "unknown perplexity convention"),
    ({"ppl": "none"}, "name at least one task"),
    ({"max_tokens": 0}, "at least 1"),
    ({"ppl": "documents", "max_tokens": 100}, "windows convention only"),
    ({"split": "dev"}, "has no split 'dev'"),
    ({"dtype": "float16"}, "unknown evaluation dtype"),
    ({"task_data": {"arc_easy": "x.jsonl"}}, "not asked for"),
])
def test_bad_specs_are_refused_with_one_line(fields, message):
    with pytest.raises(UserError, match=message):
        EvalSpec(**fields)


def test_label_names_the_text():
    spec = EvalSpec(max_tokens=16384)
    assert spec.label == "bundled test, shuffled order, first 16,384 tokens, windows of 512, float32"
    assert text_label(spec.describe()) == spec.label


def test_romer_eval_and_romer_run_score_the_same_clean_ppl(tmp_path):
    runner = CliRunner()
    evaluated = runner.invoke(app, ["eval", "--model", "olmoe-tiny", "--split", "test", "--max-tokens", "1024",
                                    "--json", "-"])
    assert evaluated.exit_code == 0, evaluated.output
    out = tmp_path / "run"
    ran = runner.invoke(app, ["run", "--set", "models=[olmoe-tiny]", "--set", "chip.chips=1", "--set",
                              "methods=[clean]", "--set", "eval.max_tokens=1024", "--out", str(out)])
    assert ran.exit_code == 0, ran.output
    rows = json.loads((out / "results.json").read_text())["rows"]
    (clean,) = [r for r in rows if r["method"] == "clean"]
    ppl = json.loads(evaluated.stdout)
    assert ppl["tokens"] == clean["tokens"] == 1024
    assert ppl["ppl"] == pytest.approx(clean["ppl_mean"], rel=1e-6)
