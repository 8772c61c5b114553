"""The command line and safe loading: results on a local HF folder, one-line errors for user mistakes."""

import json
import lzma
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from typer.testing import CliRunner

from romer.cli.main import app
from romer.data import load_tokenizer
from romer.models import ModelNotFoundError, load_model, resolve_model_dir

runner = CliRunner(env={"COLUMNS": "200"})
CORPUS = Path(__file__).resolve().parents[1] / "romer" / "data" / "corpus"


def corpus_tokens(folder: Path, split: str) -> int:
    """Text tokens of a split counted without romer: the folder's tokenizer.json (tokenizers library) on the
    split's documents read straight from the bundled jsonl.xz, joined by blank lines (DATA.md), no specials."""
    from tokenizers import Tokenizer

    with lzma.open(CORPUS / f"{split}.jsonl.xz", "rt", encoding="utf-8") as f:
        text = "\n\n".join(json.loads(line)["text"] for line in f)
    return len(Tokenizer.from_file(str(folder / "tokenizer.json")).encode(text, add_special_tokens=False).ids)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny OLMoE checkpoint with the shipped tokenizer, saved as a real HF folder (safetensors)."""
    path = tmp_path_factory.mktemp("tiny-olmoe")
    config = AutoConfig.for_model("olmoe", vocab_size=8192, hidden_size=16, num_hidden_layers=2,
                                  num_attention_heads=2, num_key_value_heads=2, intermediate_size=8,
                                  num_experts=8, num_experts_per_tok=2, max_position_embeddings=128,
                                  bos_token_id=0, eos_token_id=0, pad_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(path)
    load_tokenizer().save_pretrained(path)
    return path


def test_load_model_from_folder_is_eval_mode(folder):
    model, tokenizer = load_model(folder)
    assert not model.training and tokenizer.eos_token_id == 0
    assert next(model.parameters()).dtype == torch.float32


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "neither a zoo model"),
    (lambda p: p, "no config.json"),
])
def test_bad_model_paths_are_user_errors(tmp_path, make, message):
    with pytest.raises(ModelNotFoundError, match=message):
        resolve_model_dir(make(tmp_path))


def test_pickled_checkpoints_are_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80")
    with pytest.raises(ModelNotFoundError, match="never loads pickled"):
        resolve_model_dir(tmp_path)


def test_eval_writes_json_with_the_documented_keys(folder, tmp_path):
    out = tmp_path / "result.json"
    result = runner.invoke(app, ["eval", "--model", str(folder), "--split", "validation", "--window", "128",
                                 "--json", str(out)])
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert set(payload) == {"model", "device", "weights_dtype", "dataset", "data_path", "split", "order",
                            "ppl_convention", "window", "dtype", "tasks", "max_tokens", "tokens", "ppl_per_chip", "ppl",
                            "ppl_std", "word_ppl", "bits_per_byte"}
    assert payload["ppl_per_chip"] == [payload["ppl"]] and payload["ppl_std"] == 0 and payload["tasks"] == {}
    assert payload["split"] == "validation" and payload["window"] == 128
    assert payload["tokens"] == corpus_tokens(folder, "validation")  # every validation token scored once
    assert 1000 < payload["ppl"] < 100_000  # an untrained model is near uniform over 8192 tokens
    assert payload["word_ppl"] > payload["ppl"]  # a word spans more than one token


def test_run_scores_methods_on_the_same_chips_and_resumes(tmp_path):
    """The real evaluator end to end on the trained zoo olmoe-tiny: clean < noisy (Gaussian η = 0.05), every
    method on both chips, JSON rows as documented; a second run finds every trial in the store and computes
    nothing. (A trained model: an untrained one is near uniform, and noise moves its PPL either way.)"""
    out, js = tmp_path / "run", tmp_path / "rows.json"
    args = ["run", "--out", str(out), "--json", str(js), "--set", "models=[olmoe-tiny]", "--set", "chip.chips=2",
            "--set", "chip.presets=[{preset: gaussian, overrides: {eta: 0.05}}]",
            "--set", "eval.max_tokens=600", "--set", "eval.window=128", "--set", "calibration.sequences=4",
            "--set", "calibration.window=128", "--set", "methods=[clean,noisy,romer,maxnn-12.5%]"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(js.read_text())
    rows = {row["method"]: row for row in payload["rows"]}
    assert set(rows) == {"clean", "noisy", "romer", "maxnn-12.5%"}
    assert all(row["chips"] == 2 for row in rows.values())
    assert {"model", "method", "preset", "t", "chips", "ppl_mean", "ppl_std", "reduction_pct", "gap_recovered_pct",
            "cv_mean", "digital_share"} <= set(rows["romer"])
    assert rows["clean"]["ppl_std"] == 0 and rows["noisy"]["reduction_pct"] == 0
    assert rows["clean"]["ppl_mean"] < rows["noisy"]["ppl_mean"]
    assert rows["maxnn-12.5%"]["digital_share"] > 0 and rows["romer"]["digital_share"] == 0
    assert (out / "report.html").exists() and (out / "results.md").exists()
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert json.loads(js.read_text())["rows"] == payload["rows"]


def test_calibrate_writes_a_folder_that_eval_reads(folder, tmp_path):
    out = tmp_path / "calibrated"
    result = runner.invoke(app, ["calibrate", "--model", str(folder), "--out", str(out), "--sequences", "4",
                                 "--method", "romer", "--set", "calibration.window=64", "--seed", "1"])
    assert result.exit_code == 0, result.output
    plan = json.loads((out / "plan.json").read_text())
    assert plan["method"]["kind"] == "romer" and plan["chip"]["seed"] == 1 and plan["replacement"]
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert out.stat().st_mode & 0o777 == 0o755  # like every other output, not mkdtemp's 0700
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o644}
    js = tmp_path / "eval.json"
    result = runner.invoke(app, ["eval", "--model", str(out), "--split", "validation", "--window", "128",
                                 "--json", str(js)])
    assert result.exit_code == 0, result.output
    # the same plan fitted and applied in memory (same method, chip, windows) scores exactly the same
    from romer.calibrate import Calibrator, apply
    from romer.cli.calibrate import method_from
    from romer.cli.common import chip_from, resolve_settings
    from romer.eval import perplexity
    from romer.eval.spec import EvalSpec

    model, tokenizer = load_model(folder)
    data = resolve_settings("calibrate", {"method.kind": "romer", "calibration.sequences": 4, "chip.seed": 1},
                            ["calibration.window=64"])
    chip, _ = chip_from(data["chip"], needed=True)
    calibrator = Calibrator(method_from(data))
    in_memory = calibrator.fit(model, calibrator.windows(tokenizer), chip)
    assert {**in_memory.to_dict(), "model": {}} == {**plan, "model": {}}
    with apply(model, chip, in_memory):
        want = perplexity(model, tokenizer, EvalSpec(split="validation").text(tokenizer), window=128, batch_size=8)
    assert json.loads(js.read_text())["ppl"] == want.ppl
    again = runner.invoke(app, ["calibrate", "--model", str(folder), "--out", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output
    bad = runner.invoke(app, ["calibrate", "--model", str(folder), "--out", str(tmp_path / "x"),
                              "--set", "method.replace.variant=bogus"])
    assert bad.exit_code == 2 and "replace.variant" in bad.output and not (tmp_path / "x").exists()


@pytest.mark.parametrize("args, message", [
    (["eval", "--model", "no-such-model"], "neither a zoo model"),
    (["eval", "--model", "{folder}", "--split", "dev"], "has no split 'dev'"),
    (["eval", "--model", "{folder}", "--window", "1"], "--window must be at least 2"),
    (["zoo", "train", "gpt-5"], "unknown zoo model 'gpt-5'"),
    (["run", "--set", "chip.chips=0"], "chip.chips"),
    (["run", "--set", "eval.bogus=1"], "bogus"),
    (["calibrate", "--model", "{folder}", "--out", "{folder}/c", "--method", "magic"], "unknown --method"),
])
def test_user_mistakes_give_one_line_and_status_2(folder, tmp_path, args, message):
    out = tmp_path / "never.json"
    args = [a.replace("{folder}", str(folder)) for a in args]
    result = runner.invoke(app, args + (["--json", str(out)] if args[0] == "eval" else []))
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_noisy_eval_reports_mean_and_std_over_chips(folder, tmp_path):
    out = tmp_path / "noisy.json"
    args = ["eval", "--model", str(folder), "--split", "validation", "--window", "128", "--max-tokens", "2048",
            "--preset", "gaussian", "--set", "chip.overrides.eta=0.5", "--chips", "2", "--placement", "all",
            "--json", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert {"preset", "chips", "seeds", "ppl_per_chip", "ppl", "ppl_std"} <= set(payload)
    assert payload["preset"] == {"name": "gaussian", "eta": 0.5} and payload["chips"] == 2
    a, b = payload["ppl_per_chip"]
    assert a != b, "two chips are two independent noise draws"
    assert payload["ppl"] == pytest.approx((a + b) / 2)
    assert payload["ppl_std"] == pytest.approx(abs(a - b) / 2 ** 0.5)
    runner.invoke(app, args)  # the same chips again: identical numbers
    assert json.loads(out.read_text())["ppl_per_chip"] == [a, b]


def test_noise_show_and_plot(tmp_path):
    shown = runner.invoke(app, ["noise", "show", "pcm", "--set", "chip.overrides.prog_noise_scale=2"])
    assert shown.exit_code == 0 and "Joshi" in shown.output and "t = 3600 s" in shown.output
    png = tmp_path / "pcm.png"
    plotted = runner.invoke(app, ["noise", "plot", "hermes", "--out", str(png)])
    assert plotted.exit_code == 0 and png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args, message", [
    (["noise", "show", "flash"], "unknown noise preset 'flash'"),
    (["noise", "show", "pcm", "--set", "eta"], "--set takes SECTION.KEY=VALUE"),
    (["eval", "--model", "x", "--set", "chip.overrides.eta=1"], "needs --preset"),
])
def test_noise_mistakes_are_one_line_errors(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_zoo_card_writes_card_json_into_the_folder(folder):
    result = runner.invoke(app, ["zoo", "card", str(folder), "--window", "128"])
    assert result.exit_code == 0, result.output
    card = json.loads((folder / "card.json").read_text())
    assert card["split"] == "test" and card["tokens"] == corpus_tokens(folder, "test") and card["window"] == 128
    assert card["unigram_ppl"] < card["ppl"]  # an untrained model is worse than unigram
    assert len(card["usage"]) == 2 and card["parameters"]["total"] > card["parameters"]["active"]


def test_stats_reports_clean_vs_noisy_routing_and_oracle(folder, tmp_path):
    out, plots = tmp_path / "stats.json", tmp_path / "plots"
    result = runner.invoke(app, ["stats", "--model", str(folder), "--preset", "gaussian", "--set",
                                 "chip.overrides.eta=0.5", "--chips", "2", "--max-tokens", "1000", "--window", "128",
                                 "--json", str(out),
                                 "--plots", str(plots)])
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert payload["chips"] == 2 and len(payload["per_chip"]) == 2
    assert {"noisy_ppl", "oracle_ppl", "routing_share", "jaccard", "kl"} <= set(payload["summary"])
    assert 0 <= payload["summary"]["jaccard"]["mean"] < 1  # noise changed some routing decisions
    assert len(payload["per_layer"]) == 2 and "Jaccard" in result.output
    assert sorted(p.name for p in plots.iterdir())[:2] == [f"{folder.name}_expert_load.png",
                                                          f"{folder.name}_frequency_heatmap.png"]
