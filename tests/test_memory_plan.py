"""`romer plan-memory`: parameter counts equal the real model's, the estimated peak brackets a measured one, and
a model that cannot fit is refused before loading, in one line."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from romer.errors import UserError
from romer.models import memory
from romer.models.memory import check_fits, plan_memory
from romer.models.view import moe_layers
from romer.noise.placement import NAMED_PLACEMENTS, analog_weights
from tests.tiny_models import tiny

MEDIUM = dict(vocab_size=8192, hidden_size=512, intermediate_size=256, num_hidden_layers=4, num_attention_heads=8,
              num_key_value_heads=8, num_experts=16, num_experts_per_tok=4, max_position_embeddings=512)


@pytest.mark.parametrize("name", ["olmoe", "qwen2_moe", "deepseek_v3"])
def test_counts_equal_the_real_model(tmp_path, name):
    model = tiny(name)
    model.config.save_pretrained(tmp_path)
    plan = plan_memory(tmp_path, "bfloat16", window=16, batch_size=2)
    params = sum(p.numel() for p in model.parameters())
    assert plan.params == params and plan.model_bytes == 2 * params
    analog = analog_weights(model, NAMED_PLACEMENTS["moe"], strict=False)
    assert plan.analog_params == sum(w.parameter.numel() for w in analog)
    unused = sum(sum(p.numel() for p in l.experts.parameters_by_name().values()) * (1 - l.top_k / l.num_experts)
                 for l in moe_layers(model))
    assert plan.active_params == int(params - unused) < params
    assert plan.peak > plan.model_bytes


LOAD_OVERHEAD = 256 * 2**20  # measured 60–150 MB over the parameters (transformers' loading buffers, tokenizer)
MEASURE = """
import json, resource, sys, torch
from romer.models.loading import load_model
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
import transformers.models.olmoe.modeling_olmoe  # noqa: F401 (imports are not the model's memory)
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401
torch.set_num_threads(1)
base = rss()
def high_water():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
model, _ = load_model(sys.argv[1], dtype=torch.float32)
loaded = rss()
with open("/proc/self/clear_refs", "w") as f:  # the peak so far is loading's: start the forward's peak afresh
    f.write("5")
ids = torch.randint(1, 8000, (4, 256), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    logits = model(input_ids=ids).logits.float().log_softmax(-1)
peak = high_water()
print(json.dumps({"base": base, "loaded": loaded, "peak": peak}))
"""


def test_estimated_peak_brackets_a_measured_peak(tmp_path):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model("olmoe", **MEDIUM))
    model.save_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text((memory.Path(__file__).parents[1] / "romer/models/zoo/olmoe-tiny/"
                                              "tokenizer.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(
        (memory.Path(__file__).parents[1] / "romer/models/zoo/olmoe-tiny/tokenizer_config.json").read_text())
    done = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path)], capture_output=True, text=True, check=True)
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    plan = plan_memory(tmp_path, "float32", window=256, batch_size=4)
    loaded, forward = measured["loaded"] - measured["base"], measured["peak"] - measured["loaded"]
    print(loaded, plan.model_bytes, forward, plan.stages)
    assert plan.model_bytes < loaded < plan.model_bytes + LOAD_OVERHEAD  # loading adds a fixed overhead only
    evaluation = plan.stages["evaluation (batch 4 × 256)"]
    assert 0.5 < forward / evaluation < 2.0, (forward, evaluation)


def test_a_model_that_cannot_fit_is_refused_in_one_line(tmp_path, monkeypatch):
    tiny("olmoe").config.save_pretrained(tmp_path)
    check_fits(tmp_path, "cpu", "float32", 16, 2)  # fits this machine
    monkeypatch.setattr(memory, "available_ram_bytes", lambda: 1 << 20)
    with pytest.raises(UserError, match=r"does not fit: cpu \(RAM\) needs ≈ [\d.]+ GiB, has 0.00 GiB free") as info:
        check_fits(tmp_path, "cpu", "float32", 16, 2)
    assert "\n" not in str(info.value) and "romer plan-memory" in str(info.value)


def test_plan_memory_command_json(tmp_path):
    from typer.testing import CliRunner

    from romer.cli.main import app

    tiny("olmoe").config.save_pretrained(tmp_path)
    result = CliRunner().invoke(app, ["plan-memory", "--model", str(tmp_path), "--dtype", "bfloat16", "--json", "-"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["params"] == sum(p.numel() for p in tiny("olmoe").parameters())
    assert payload["devices"][0]["device"] == "cpu (RAM)"


def test_unbuildable_config_is_a_user_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-family"}))
    with pytest.raises(UserError, match="no-such-family"):
        plan_memory(tmp_path)
