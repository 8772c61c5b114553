"""Zero-shot accuracy through lm-eval over in-memory zoo models, offline; lm-eval's word perplexity cross-checked."""

from __future__ import annotations

import json
import math
import os
import re
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from romer.data import load_documents
from romer.errors import UserError
from romer.eval import (
    MetricSummary,
    TaskScore,
    document_perplexity,
    evaluate_chips,
    evaluate_tasks,
    perplexity,
    rolling_windows,
    summarize,
)
from romer.eval.task_data import TASK_DIR, task_records
from romer.eval.zero_shot import _parse_results
from romer.models import load_model
from romer.noise.chip import Chip, program

pytest.importorskip("lm_eval")
TASKS = Path(__file__).parent / "fixtures" / "tasks"


@pytest.fixture(scope="module")
def olmoe():
    return load_model("olmoe-tiny")


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def binomial_stderr(p: float, n: int) -> float:
    """lm-eval's stderr of a mean of n 0/1 scores: sample std (n − 1) / √n = √(p (1 − p) / (n − 1))."""
    return math.sqrt(p * (1 - p) / (n - 1))


# --- golden: lm-eval's rolling windows, and the summaries -----------------------------------------------------------

def test_rolling_windows_by_hand():
    windows = rolling_windows([1, 2, 3, 4, 5, 6, 7], max_length=3, prefix_id=0)
    got = [(w.input_ids.tolist(), w.targets.tolist(), w.first) for w in windows]
    # first: [prefix] + 1 2 → predicts 1 2 3; then 3 4 5 → 4 5 6 (context: the previous window's last token);
    # last, partial: 4 5 6 → 7 only, from the logit at position 2 (context 4 5 6).
    assert got == [([0, 1, 2], [1, 2, 3], 0), ([3, 4, 5], [4, 5, 6], 0), ([4, 5, 6], [7], 2)]
    assert [(w.input_ids.tolist(), w.targets.tolist()) for w in rolling_windows([9], 4, 0)] == [([0], [9])]


class UniformModel(nn.Module):
    """p = 1/V for every token (float64): any text's NLL is tokens × ln V."""

    def __init__(self, vocab=10):
        super().__init__()
        self.vocab = vocab
        self.dummy = nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab, dtype=torch.float64) + self.dummy)


class CharTokenizer:
    bos_token_id, eos_token_id, pad_token_id = 0, 0, 9

    def encode(self, text):
        return [1 + "ab ".index(c) for c in text]


def test_document_perplexity_counts_per_document_by_hand():
    docs = ["ab a", "b  ba b"]  # 4 and 7 tokens; words: 2 and 3 (re.split on "\s+")
    result = document_perplexity(UniformModel(), CharTokenizer(), docs, max_length=3, batch_size=2)
    assert (result.tokens, result.words, result.bytes) == (11, 5, 11)
    assert result.nll_sum == pytest.approx(11 * math.log(10), rel=1e-12)
    assert result.word_ppl == pytest.approx(math.exp(11 * math.log(10) / 5), rel=1e-12)


def test_metric_summary_by_hand():
    s = MetricSummary.of([0.25, 0.75])
    assert (s.mean, s.std) == (0.5, pytest.approx(math.sqrt(0.125)))  # ((0.25² + 0.25²) / 1) ** 0.5
    assert MetricSummary.of([0.4]).std == 0.0
    chips = [{"t": TaskScore("t", 4, {"acc": 0.25, "acc_norm": 0.5}, {})},
             {"t": TaskScore("t", 4, {"acc": 0.75, "acc_norm": 0.5}, {})}]
    summary = summarize(chips)
    assert summary["t"]["acc"].mean == 0.5 and summary["t"]["acc_norm"].std == 0.0


def test_parse_results_reads_lm_eval_keys():
    block = {"alias": "x", "acc,none": 0.5, "acc_stderr,none": 0.1, "acc_norm,none": 0.25,
             "acc_norm_stderr,none": 0.05, "perplexity,none": 3.0, "perplexity_stderr,none": "N/A"}
    score = _parse_results({"x": block}, {"x": 8}, ["x"])["x"]
    assert score.metrics == {"acc": 0.5, "acc_norm": 0.25, "perplexity": 3.0}
    assert score.stderr["acc"] == 0.1 and score.stderr["acc_norm"] == 0.05 and math.isnan(score.stderr["perplexity"])
    assert score.samples == 8


# --- cross-check: romer's document perplexity is lm-eval's word_perplexity --------------------------------------------

def test_word_perplexity_equals_lm_eval(olmoe, no_network):
    import datasets
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model, tokenizer = olmoe
    docs = [d.text[:1500] for d in load_documents("test")[:2]] + ["Short one.", "two  spaces\n\nand lines "]
    ours = document_perplexity(model, tokenizer, docs, max_length=96, batch_size=4)

    def dataset(**_):
        return datasets.DatasetDict({"test": datasets.Dataset.from_list([{"text": d} for d in docs])})

    config = {"task": "xcheck", "custom_dataset": dataset, "output_type": "loglikelihood_rolling",
              "test_split": "test", "doc_to_text": "", "doc_to_target": "{{text}}",
              "metric_list": [{"metric": "word_perplexity", "aggregation": "weighted_perplexity",
                               "higher_is_better": False}]}
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=3, max_length=96)
    out = simple_evaluate(model=lm, tasks=[config], task_manager=TaskManager(include_defaults=False),
                          verbosity="ERROR", random_seed=None, numpy_random_seed=None, torch_random_seed=None)
    theirs = out["results"]["xcheck"]["word_perplexity,none"]
    assert ours.word_ppl == pytest.approx(theirs, rel=1e-6)
    # GPTQ-style windows over the joined text are a different number (BOS per window, no cross-window context).
    joined = perplexity(model, tokenizer, "\n\n".join(docs), window=96)
    assert abs(joined.nll_sum - ours.nll_sum) / ours.nll_sum > 1e-3


# --- lm-eval evaluation of a zoo model, offline ------------------------------------------------------------------------

def test_bundled_and_public_format_tasks_end_to_end_offline(olmoe, no_network):
    model, tokenizer = olmoe
    env_before = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    paths = {"arc_easy": TASKS / "ARC-Easy-Test.jsonl", "arc_challenge": TASKS / "arc_challenge_hub.jsonl",
             "piqa": TASKS / "valid.jsonl", "lambada_openai": TASKS / "lambada_test.jsonl"}
    tasks = ["romer_cloze", "romer_nextsent", *paths]
    scores = evaluate_tasks(model, tokenizer, tasks, data_paths=paths, limit=12)
    assert {k: os.environ.get(k) for k in env_before} == env_before
    assert set(scores) == set(tasks)
    assert {t: scores[t].samples for t in tasks} == {"romer_cloze": 12, "romer_nextsent": 12, "arc_easy": 3,
                                                     "arc_challenge": 2, "piqa": 3, "lambada_openai": 2}
    for task in ("romer_nextsent", "arc_easy", "arc_challenge", "piqa"):
        score = scores[task]
        for metric in ("acc", "acc_norm"):
            p, n = score.metrics[metric], score.samples
            assert p in {k / n for k in range(n + 1)}
            assert score.stderr[metric] == pytest.approx(binomial_stderr(p, n), rel=1e-9)
    assert "acc_norm" not in scores["romer_cloze"].metrics and "perplexity" in scores["romer_cloze"].metrics


def test_public_task_formats_read_as_lm_eval_expects():
    ai2 = task_records("arc_easy", TASKS / "ARC-Easy-Test.jsonl")
    assert ai2[1] == {"id": "Q2", "question": "What falls from clouds?",
                      "choices": {"text": ["stones", "rain", "bread"], "label": ["1", "2", "3"]}, "answerKey": "2"}
    assert task_records("arc_challenge", TASKS / "arc_challenge_hub.jsonl")[0]["choices"]["text"][0] == "sunlight"
    assert [r["label"] for r in task_records("piqa", TASKS / "valid.jsonl")] == [0, 0, 1]  # from valid-labels.lst
    assert task_records("piqa", TASKS)[2]["sol2"] == "switch on the lamp."  # a folder: valid.jsonl + labels


def test_accuracy_mean_and_std_over_two_chips(olmoe):
    model, tokenizer = olmoe
    clean = {n: p.detach().clone() for n, p in model.named_parameters()}
    chips = Chip.from_options("pcm", seed=3).series(2)

    def programmed():
        for chip in chips:
            with program(model, chip, clean_store="memory"):
                yield model

    result = evaluate_chips(programmed(), tokenizer, ["romer_nextsent"], limit=16)
    assert len(result.per_chip) == 2
    values = [chip["romer_nextsent"].acc for chip in result.per_chip]
    summary = result.summary["romer_nextsent"]["acc"]
    assert summary.values == tuple(values)
    assert summary.mean == pytest.approx(sum(values) / 2)
    assert summary.std == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2))  # sample std of two values
    assert all(torch.equal(p, clean[n]) for n, p in model.named_parameters())  # restored by the caller's scope
    json.dumps(result.to_dict())


# --- the shipped tasks' data and one-line errors ---------------------------------------------------------------------

def test_bundled_tasks_are_what_the_script_promises():
    cloze = task_records("romer_cloze")
    for record in cloze:  # the target closes the passage and occurred earlier in it, spelled the same
        *context, target = record["text"].split(" ")
        assert target.isalpha() and len(target) >= 3 and target in re.findall(r"[A-Za-z]+", " ".join(context))
    nextsent = [json.loads(line) for line in (TASK_DIR / "romer_nextsent.jsonl").read_text().splitlines()]
    test_text = " ".join(" ".join(d.text for d in load_documents("test")).split())
    for item in nextsent:  # the gold choice continues the context in the test split; chance is 1/4
        assert len(item["choices"]) == 4 and len(set(item["choices"])) == 4 and item["label"] in range(4)
        assert f"{item['context']} {item['choices'][item['label']]}" in test_text
    assert len(cloze) == 300 and len(nextsent) == 300


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and message
    return message


def test_task_errors_are_one_line(olmoe, tmp_path, no_network):
    model, tokenizer = olmoe
    with pytest.raises(UserError) as err:
        evaluate_tasks(model, tokenizer, ["arc_easy"])
    assert "needs the path of its local data" in one_line(err)
    with pytest.raises(UserError) as err:
        evaluate_tasks(model, tokenizer, ["piqa"], data_paths={"piqa": tmp_path / "missing.jsonl"})
    assert "no such file or folder" in one_line(err)
    (tmp_path / "wrong.jsonl").write_text('{"text": "not an ARC question"}\n')
    with pytest.raises(UserError) as err:
        evaluate_tasks(model, tokenizer, ["arc_easy"], data_paths={"arc_easy": tmp_path / "wrong.jsonl"})
    assert "not arc_easy data" in one_line(err)
    (tmp_path / "piqa.jsonl").write_text('{"goal": "g", "sol1": "a", "sol2": "b"}\n')
    with pytest.raises(UserError) as err:
        evaluate_tasks(model, tokenizer, ["piqa"], data_paths={"piqa": tmp_path / "piqa.jsonl"})
    assert "no labels file" in one_line(err)
    with pytest.raises(UserError) as err:  # an lm-eval task whose data is on the Hub only, not here
        evaluate_tasks(model, tokenizer, ["hellaswag"])
    assert "could not load task(s) hellaswag offline" in one_line(err)
