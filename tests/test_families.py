"""Every named MoE family from a saved checkpoint folder through the whole pipeline (program → stats → ROMER
calibration → save → reload → perplexity); other transformers families found by structure; loading safety with
its exact one-line refusals."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import romer
from romer.calibrate import Calibrator, apply
from romer.calibrate.config import MethodConfig
from romer.calibrate.folder import save_calibrated
from romer.calibrate.routing_rule import RouterFix, route
from romer.data import load_tokenizer
from romer.errors import UserError
from romer.eval import perplexity
from romer.models import DenseModelError, UnsafeModelError, UnsupportedModelError, load_model
from romer.models.loading import ModelNotFoundError, resolve_device, resolve_dtype
from romer.models.view import moe_layers
from romer.noise.chip import Chip, program
from romer.routing import record_routing
from tests.test_oracle import FakeDeepseekLM
from tests.test_routing_recorder import TEXT, CharTokenizer
from tests.tiny_models import NAMES, save_tiny, tiny

TOKENIZER = load_tokenizer()
BIG_VOCAB = dict(vocab_size=8192, num_hidden_layers=2, bos_token_id=0, eos_token_id=0, pad_token_id=0)
CHIP = Chip.from_options("gaussian", eta=0.3, placement="moe", seed=3)
SHORT_TEXT = "It is a truth universally acknowledged, that a single man in possession of a good fortune, " * 3
ROMER = MethodConfig(name="romer", kind="romer", calibration={"batch_size": 3})


def ids(rows=6, length=24, seed=0, vocab=8192):
    return torch.randint(1, vocab, (rows, length), generator=torch.Generator().manual_seed(seed))


def own_routing(model, batch):
    """What every router returned, read at transformers 5's documented slots (logits, weights, indices)."""
    seen = []
    handles = [layer.router.register_forward_hook(lambda m, a, out: seen.append((out[1].detach(), out[2], out[0])))
               for layer in moe_layers(model)]
    try:
        with torch.no_grad():
            model(input_ids=batch)
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.fixture(scope="module", params=NAMES)
def folder(request, tmp_path_factory):
    return request.param, save_tiny(request.param, tmp_path_factory.mktemp(request.param), TOKENIZER, **BIG_VOCAB)


def test_routing_stats_equal_the_family_router_and_the_rule_reproduces_it(folder):
    _, path = folder
    model, _ = load_model(path)
    batch = ids(2, 16)
    own = own_routing(model, batch)
    with record_routing(model) as record:
        with torch.no_grad():
            model(input_ids=batch)
    assert len(own) == len(record.layers) > 0
    for (weights, indices, logits), layer_rec, layer in zip(own, record.layers, moe_layers(model)):
        flat_i, flat_w = indices.reshape(-1).long(), weights.reshape(-1).double()
        assert torch.equal(layer_rec.counts, torch.bincount(flat_i, minlength=8))
        mass = torch.zeros(8, dtype=torch.float64).index_add_(0, flat_i, flat_w)
        torch.testing.assert_close(layer_rec.mass, mass, rtol=0, atol=1e-8)
        _, w, i = route(layer, logits.reshape(-1, 8), RouterFix(layer.index), weights.dtype)
        got = torch.zeros(i.shape[0], 8, dtype=torch.float64).scatter(1, i, w.double())
        want = torch.zeros(i.shape[0], 8, dtype=torch.float64).scatter(1, indices.reshape(-1, 2).long(),
                                                                       weights.reshape(-1, 2).double())
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_whole_pipeline_from_the_folder(folder, tmp_path):
    name, path = folder
    model, tokenizer = load_model(path)
    windows = ids()
    with record_routing(model) as clean:
        with torch.no_grad():
            model(input_ids=windows)
    with program(model, CHIP), record_routing(model) as noisy:
        with torch.no_grad():
            model(input_ids=windows)
    assert any(not torch.equal(c.counts, n.counts) for c, n in zip(clean, noisy))  # the chip changes routing
    assert all(c.counts.sum() == n.counts.sum() == 6 * 24 * 2 for c, n in zip(clean, noisy))
    plan = Calibrator(ROMER).fit(model, windows, CHIP)
    assert plan.model["model_type"] == name.split("-")[0] and plan.replacement
    with apply(model, CHIP, plan):
        in_memory = perplexity(model, tokenizer, SHORT_TEXT, window=32, batch_size=2)
    out = save_calibrated(model, tokenizer, CHIP, plan, tmp_path / "calibrated")
    reloaded, tok = romer.load(out)
    again = perplexity(reloaded, tok, SHORT_TEXT, window=32, batch_size=2)
    assert again.tokens == in_memory.tokens > 0
    assert again.nll_sum == pytest.approx(in_memory.nll_sum, rel=1e-5)
    assert torch.isfinite(torch.tensor(again.ppl))


class FakeDeepseekCausalLM(FakeDeepseekLM):
    """The oracle tests' fake with what the chip placement reads from a causal LM (attention, embeddings)."""

    def __init__(self):
        super().__init__()
        for layer in self.model.layers:
            layer.self_attn = nn.Identity()

    def get_input_embeddings(self):
        return self.embed

    def get_output_embeddings(self):
        return self.head


def test_modulelist_deepseek_layout_through_the_pipeline():
    """The remote-code layout (ModuleList experts, MoEGate returning (indices, weights, aux)), in memory."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = FakeDeepseekCausalLM().eval()
    windows = ids(6, 24, vocab=64)
    tok = CharTokenizer()
    clean_ppl = perplexity(model, tok, TEXT, window=24, batch_size=3)
    plan = Calibrator(ROMER).fit(model, windows, CHIP)
    with apply(model, CHIP, plan), record_routing(model) as record:
        fixed = perplexity(model, tok, TEXT, window=24, batch_size=3)
    masked = [{c for c, _ in r.pairs} for r in plan.replacement]
    assert all(not torch.any(layer.counts[list(m)]) for layer, m in zip(record, masked) if m)
    assert fixed.tokens == clean_ppl.tokens and torch.isfinite(torch.tensor(fixed.ppl))


# --- other transformers 5 families, no code of their own --------------------------------------------------

STRUCTURAL = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                  intermediate_size=48, num_experts_per_tok=2, max_position_embeddings=64, num_experts=8,
                  num_local_experts=8, n_routed_experts=8, moe_intermediate_size=16, head_dim=8,
                  first_k_dense_replace=0, n_shared_experts=1, shared_expert_intermediate_size=16)
OTHERS = ["glm4_moe", "granitemoe", "hunyuan_v1_moe", "minimax", "ernie4_5_moe", "dots1"]


def other(model_type):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **STRUCTURAL)).eval()


@pytest.mark.parametrize("model_type", OTHERS)
def test_other_families_are_found_by_structure(model_type):
    model = other(model_type)
    batch = ids(2, 12, vocab=64)
    own = own_routing(model, batch)
    with record_routing(model) as record:
        with torch.no_grad():
            model(input_ids=batch)
    assert len(own) == len(record.layers) > 0
    for (weights, indices, logits), layer_rec, layer in zip(own, record.layers, moe_layers(model)):
        assert torch.equal(layer_rec.counts, torch.bincount(indices.reshape(-1).long(), minlength=8))
        _, w, i = route(layer, logits.reshape(-1, 8), RouterFix(layer.index), weights.dtype)
        got = torch.zeros(i.shape[0], 8, dtype=torch.float64).scatter(1, i, w.double())
        want = torch.zeros(i.shape[0], 8, dtype=torch.float64).scatter(1, indices.reshape(-1, 2).long(),
                                                                       weights.reshape(-1, 2).double())
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    with program(model, CHIP):  # the analog groups are found, written and restored
        pass


def test_a_family_with_an_unknown_router_rule_is_refused_naming_what_was_found():
    model = tiny("olmoe")
    router = model.model.layers[0].mlp.gate
    plain = router.forward

    def squared(hidden):  # a rule romer does not know: the softmax top-k weights squared
        logits, weights, indices = plain(hidden)
        return logits, weights.square(), indices

    router.forward = squared
    with pytest.raises(UnsupportedModelError) as info:
        moe_layers(model)
    assert str(info.value) == ("model_type 'olmoe': router model.layers.0.mlp.gate (OlmoeTopKRouter) matches none of "
                               "the routing rules romer knows (softmax top-k); experts at model.layers.0.mlp.experts "
                               "(OlmoeExperts, fused)")


# --- loading safety ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def olmoe_folder(tmp_path_factory):
    return save_tiny("olmoe", tmp_path_factory.mktemp("olmoe"), TOKENIZER, **BIG_VOCAB)


def write_config(folder, **extra):
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "olmoe", **extra}))
    return folder


def test_pickle_only_folder_needs_the_opt_in(tmp_path):
    model = tiny("olmoe", **BIG_VOCAB)  # transformers 5 writes safetensors only: pickle by hand, as old checkpoints
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    TOKENIZER.save_pretrained(tmp_path)
    assert (tmp_path / "pytorch_model.bin").exists() and not list(tmp_path.glob("*.safetensors"))
    with pytest.raises(UnsafeModelError) as info:
        load_model(tmp_path)
    assert str(info.value) == (f"{tmp_path}: only pickled weights (pytorch_model.bin); romer never loads pickled "
                               "checkpoints unless asked: pass allow_pickle=True (--allow-pickle) if you trust the file")
    loaded, _ = load_model(tmp_path, allow_pickle=True)
    want = model.state_dict()
    assert all(torch.equal(p, want[n]) for n, p in loaded.state_dict().items())


def test_remote_code_needs_the_opt_in(tmp_path):
    write_config(tmp_path, auto_map={"AutoModelForCausalLM": "modeling_deepseek.DeepseekForCausalLM",
                                     "AutoConfig": "configuration_deepseek.DeepseekConfig"})
    save_file({"w": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(UnsafeModelError) as info:
        load_model(tmp_path)
    assert str(info.value) == (f"{tmp_path}/config.json asks for remote modeling code (auto_map: AutoConfig, "
                               "AutoModelForCausalLM); romer runs it only when asked: pass trust_remote_code=True "
                               "(--trust-remote-code) if you trust the folder")


def test_dense_model_folder_is_refused(tmp_path):
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                 num_attention_heads=4, num_key_value_heads=4)).save_pretrained(tmp_path)
    with pytest.raises(DenseModelError) as info:
        load_model(tmp_path)
    assert str(info.value) == ("model_type 'llama' (LlamaForCausalLM) is a dense model: no decoder layer has routed "
                               "experts; romer needs a mixture-of-experts model")


def test_unknown_layout_folder_is_refused(tmp_path):
    other("minimax_m2").save_pretrained(tmp_path)  # its router needs the block's correction bias as an argument
    with pytest.raises(UnsupportedModelError, match="^model_type 'minimax_m2': router .* fails on "
                                                    r"\[tokens, hidden\] input"):
        load_model(tmp_path)


def test_bad_folders_are_one_line_errors(tmp_path, olmoe_folder):
    cases = {}
    cases["missing"] = (tmp_path / "missing", "neither a zoo model")
    cases["no config"] = (tmp_path / "empty", "no config.json, not a Hugging Face model folder")
    (tmp_path / "empty").mkdir()
    bad_json = write_config(tmp_path / "bad-json")
    (bad_json / "config.json").write_text("{not json")
    save_file({"w": torch.zeros(1)}, str(bad_json / "model.safetensors"))
    cases["bad json"] = (bad_json, "config.json: not valid JSON (")
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    for f in olmoe_folder.iterdir():
        (truncated / f.name).write_bytes(f.read_bytes())
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    cases["truncated"] = (truncated, "cannot read the weights (")
    for what, (path, message) in cases.items():
        with pytest.raises(ModelNotFoundError) as info:
            load_model(path)
        assert message in str(info.value) and "\n" not in str(info.value), what


def test_non_finite_weights_are_refused_by_name(tmp_path):
    model = tiny("olmoe", **BIG_VOCAB)
    with torch.no_grad():
        model.model.layers[1].mlp.experts.down_proj[3, 0, 0] = float("nan")
    model.save_pretrained(tmp_path)
    TOKENIZER.save_pretrained(tmp_path)
    with pytest.raises(UserError) as info:
        load_model(tmp_path)
    assert str(info.value) == (f"{tmp_path}: tensor model.layers.1.mlp.experts.down_proj holds NaN or infinite "
                               "values; refusing to run it")


def test_device_and_dtype(olmoe_folder):
    model, _ = load_model(olmoe_folder, dtype="bfloat16", device="auto")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in model.parameters()} == {expected}
    assert resolve_dtype(torch.float16) is torch.float16 and resolve_dtype("fp32") is torch.float32
    for bad in ("meta", "tpu", "cuda:99", "nonsense:x"):
        with pytest.raises(UserError):
            resolve_device(bad)
    with pytest.raises(UserError, match="unsupported dtype"):
        resolve_dtype("int8")
