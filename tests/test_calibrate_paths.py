"""Calibration paths not covered elsewhere: the MaxNN choice itself, P3 token mode, ``apply_to: selection``, chip
transfer (``fit_seed_offset``), refusal of routing romer cannot reproduce, the calibration sampler's errors, and a
calibrated folder reloaded with ``romer.load`` giving exactly the in-memory plan's outputs."""

import numpy as np
import pytest
import torch

import romer
from romer.calibrate import Calibrator, apply
from romer.calibrate.config import CalibrationData, MethodConfig
from romer.calibrate.data import calibration_windows
from romer.calibrate.folder import save_calibrated
from romer.calibrate.plan import Plan
from romer.calibrate.routing_rule import RouterFix
from romer.data import load_tokenizer
from romer.errors import UserError
from romer.models.sorted_experts import use_sorted_experts
from romer.models.view import UnsupportedModelError, moe_layers
from romer.noise.chip import Chip
from tests.tiny_models import VOCAB, tiny

CHIP = Chip.from_options("gaussian", eta=0.3, placement="moe", seed=3)
E, I = 8, 48  # tiny olmoe: 8 experts of width 48, hidden 32


def windows(rows=6, length=24, seed=0, vocab=VOCAB):
    return torch.randint(1, vocab, (rows, length), generator=torch.Generator().manual_seed(seed))


def calibrator(kind, **options):
    return Calibrator(MethodConfig(name=kind, kind=kind, calibration={"batch_size": 3}, **options))


class Taps:
    """Forward hooks on every router, recording its outputs (logits, weights, indices) per layer index. Hooks run
    in the order they were registered: taps set before ``apply`` see the router's own output, taps set after it
    see what the plan's routing hook made of it."""

    def __init__(self, model):
        self.seen = {}
        self.handles = [layer.router.register_forward_hook(
            lambda m, a, o, i=layer.index: self.seen.setdefault(i, []).append(tuple(t.detach().clone() for t in o)))
            for layer in moe_layers(model)]

    def outputs(self):
        for h in self.handles:
            h.remove()
        return {i: tuple(torch.cat([c[k] for c in calls]) for k in range(3)) for i, calls in self.seen.items()}


def capture(model, ids):
    """Router outputs (logits, weights, indices) per layer index for one forward of ``ids``."""
    taps = Taps(model)
    with torch.no_grad():
        model(input_ids=ids)
    return taps.outputs()


# --- MaxNN: the experts with the largest maximum neuron norm -------------------------------------------------

def test_maxnn_keeps_the_experts_with_the_largest_max_neuron_norm_digital():
    """Neuron j of expert e is (W_gate[j, :], W_up[j, :], W_down[:, j]). Per layer, with every other weight
    ≤ 1e-3: expert X has 1.2 in gate, up and down of the same neuron (norm 1.2·√3 ≈ 2.08); expert Z one entry
    2.0 in the down column of one neuron (2.0); expert Y 1.9 in gate, up and down of three different neurons
    (max 1.9, though its per-matrix maxima sum to 5.7); expert W 1.5 in the gate row of every neuron (max 1.5,
    the largest Frobenius norm, 1.5·√48 ≈ 10.4). A 25 % share keeps {X, Z} digital."""
    model = tiny("olmoe")
    picks = {0: dict(X=5, Z=2, Y=1, W=6), 1: dict(X=0, Z=7, Y=3, W=4), 2: dict(X=3, Z=6, Y=0, W=1)}
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer_index, p in picks.items():
            experts = model.model.layers[layer_index].mlp.experts
            gate_up, down = experts.gate_up_proj, experts.down_proj  # [E, 2I, H] (gate rows first), [E, H, I]
            gate_up.copy_((torch.rand(gate_up.shape, generator=generator) * 2 - 1) * 1e-3)
            down.copy_((torch.rand(down.shape, generator=generator) * 2 - 1) * 1e-3)
            j = 11
            gate_up[p["X"], j, 0] = gate_up[p["X"], I + j, 1] = down[p["X"], 2, j] = 1.2
            down[p["Z"], 0, j] = 2.0
            gate_up[p["Y"], 3, 0] = gate_up[p["Y"], I + 4, 0] = down[p["Y"], 0, 5] = 1.9
            gate_up[p["W"], :I, 0] = 1.5
    plan = calibrator("maxnn", maxnn={"expert_share": 0.25}).fit(model, windows(), CHIP)
    assert plan.digital_experts == {i: sorted([p["X"], p["Z"]]) for i, p in picks.items()}
    one = calibrator("maxnn", maxnn={"expert_share": 0.125}).fit(model, windows(), CHIP)
    assert one.digital_experts == {i: [p["X"]] for i, p in picks.items()}


# --- P3 token mode -------------------------------------------------------------------------------------------

def test_p3_token_mode_gives_every_token_the_clean_reference_scale():
    """P3: z'_t = z_t · S_r / Q_p(|z_t|), S_r = mean over clean calibration tokens of Q_p(|z_t|). S_r is computed
    here with numpy from the clean router logits; under the plan every token's corrected logits then have
    Q_p(|z'_t|) = S_r exactly (a percentile is scale-equivariant), whatever the chip did to them."""
    model, ids, p = tiny("olmoe"), windows(), 90.0
    clean = capture(model, ids)
    plan = calibrator("recalibrate", recalibrate={"mode": "token", "p": p}).fit(model, ids, CHIP)
    fixes = {f.layer: f for f in plan.router}
    for layer_index, (logits, _, _) in clean.items():
        want = np.percentile(np.abs(logits.double().numpy()), p, axis=-1).mean()
        assert fixes[layer_index].token_p == p
        assert fixes[layer_index].token_scale == pytest.approx(want, rel=1e-5)
        assert fixes[layer_index].scale is None and fixes[layer_index].offset is None
    other = windows(seed=1)
    with apply(model, CHIP, plan):
        fixed = capture(model, other)
    for layer_index, (logits, _, _) in fixed.items():
        q = np.percentile(np.abs(logits.double().numpy()), p, axis=-1)
        np.testing.assert_allclose(q, fixes[layer_index].token_scale, rtol=1e-5)
    with apply(model, CHIP, Plan.none(CHIP)):
        noisy = capture(model, other)
    q_noisy = np.percentile(np.abs(noisy[0][0].double().numpy()), p, axis=-1)
    assert q_noisy.std() > 1e-3  # without the plan the per-token scales do vary: the correction did something


# --- apply_to: selection vs selection+gates ------------------------------------------------------------------

@pytest.mark.parametrize("apply_to", ["selection", "selection+gates"])
def test_apply_to_decides_where_the_gate_weights_come_from(apply_to):
    """P1 with apply_to "selection": the corrected logits z' = scale·z + offset choose the experts, the gate
    weights are the router's own softmax(z) at them (olmoe: no renormalisation); with "selection+gates" the
    weights are softmax(z') at them."""
    model, ids = tiny("olmoe"), windows()
    plan = calibrator("recalibrate", recalibrate={"apply_to": apply_to}).fit(model, ids, CHIP)
    other = windows(seed=2)
    raw_taps = Taps(model)  # the chip's own router outputs, in the same forward, before the correction
    with apply(model, CHIP, plan):
        fixed = capture(model, other)
    raw = raw_taps.outputs()
    differs = 0
    for fix in plan.router:
        z = raw[fix.layer][0].double()
        z_fixed = z * torch.tensor(fix.scale, dtype=torch.float64) + torch.tensor(fix.offset, dtype=torch.float64)
        _, weights, indices = fixed[fix.layer]
        assert torch.equal(indices.sort(-1).values, z_fixed.topk(2, dim=-1).indices.sort(-1).values)
        source = z if apply_to == "selection" else z_fixed
        torch.testing.assert_close(weights.double(), source.softmax(-1).gather(1, indices), rtol=1e-5, atol=1e-7)
        differs += int((indices.sort(-1).values != raw[fix.layer][2].sort(-1).values).any(-1).sum())
    assert differs > 0  # the correction changed some choices


# --- chip transfer -------------------------------------------------------------------------------------------

def test_fit_seed_offset_fits_on_another_chip_and_equals_fitting_there():
    model, ids = tiny("olmoe"), windows()
    transfer = calibrator("romer", fit_seed_offset=1000).fit(model, ids, CHIP)
    there = calibrator("romer").fit(model, ids, CHIP.with_seed(CHIP.seed + 1000))
    here = calibrator("romer").fit(model, ids, CHIP)
    assert transfer.chip["seed"] == 1003 and here.chip["seed"] == 3
    assert transfer.chip == there.chip
    decided = lambda plan: {k: plan.to_dict()[k] for k in ("replacement", "router", "digital_experts")}  # noqa: E731
    assert decided(transfer) == decided(there) and decided(transfer) != decided(here)


# --- refusals ------------------------------------------------------------------------------------------------

def test_a_router_with_an_unknown_rule_is_refused():
    """A router whose gate weights are softmax(z/2) at its top-k: no rule romer knows reproduces them."""
    model = tiny("olmoe")
    router = model.model.layers[0].mlp.gate

    def forward(hidden):
        z = torch.nn.functional.linear(hidden.reshape(-1, router.weight.shape[1]), router.weight)
        weights, indices = torch.topk(torch.softmax(z / 2, dim=-1), 2, dim=-1)
        return z, weights, indices

    router.forward = forward
    with pytest.raises(UnsupportedModelError, match="matches none of the routing rules romer knows"):
        moe_layers(model)


def test_a_plan_for_a_layer_the_model_lacks_is_refused_and_the_model_left_clean():
    model = tiny("olmoe")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = Plan.none(CHIP)
    plan.router = [RouterFix(7, scale=[1.0] * E, offset=[0.0] * E)]
    with pytest.raises(UnsupportedModelError, match="the plan fixes MoE layer 7, the model has \\[0, 1, 2\\]"):
        apply(model, CHIP, plan)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(not layer.router._forward_hooks for layer in moe_layers(model))


# --- the calibration sampler ---------------------------------------------------------------------------------

class CharTokenizer:
    """One token per character (id = code point), BOS 0: token counts can be read off the text."""

    def __init__(self, bos=0, eos=None):
        self.bos_token_id, self.eos_token_id = bos, eos

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


def fake_documents(monkeypatch, *texts):
    monkeypatch.setattr("romer.calibrate.data.load_dataset_documents", lambda name, path, split: list(texts))


def test_calibration_windows_cut_bos_prefixed_windows(monkeypatch):
    """"abc" and "de" with their blank-line separators are 5 + 4 = 9 tokens; 2 windows of 5 need 2·4 = 8."""
    fake_documents(monkeypatch, "abc", "de")
    got = calibration_windows(CharTokenizer(), CalibrationData(sequences=2, window=5))
    assert got.shape == (2, 5) and got.dtype == torch.long and got[:, 0].tolist() == [0, 0]
    body = "".join(map(chr, got[:, 1:].flatten().tolist()))
    assert body in ("abc\n\nde\n", "de\n\nabc\n")  # the documents in some order, cut at 8 tokens
    assert calibration_windows(CharTokenizer(bos=None, eos=7), CalibrationData(sequences=2, window=5))[:, 0].eq(7).all()


@pytest.mark.parametrize("texts, sequences, window, message", [
    (("abc", "de"), 2, 6, "the train split of bundled has 9 tokens, fewer than the 10 that 2 calibration windows of 6 need"),
    ((), 1, 2, "the train split of bundled has 0 tokens, fewer than the 1 that 1 calibration windows of 2 need"),
])
def test_calibration_windows_refuse_a_corpus_too_short(monkeypatch, texts, sequences, window, message):
    fake_documents(monkeypatch, *texts)
    with pytest.raises(UserError) as info:
        calibration_windows(CharTokenizer(), CalibrationData(sequences=sequences, window=window))
    assert str(info.value) == message


def test_calibration_windows_refuse_a_tokenizer_without_bos_or_eos(monkeypatch):
    fake_documents(monkeypatch, "abc", "de")
    with pytest.raises(UserError, match="neither a BOS nor an EOS token"):
        calibration_windows(CharTokenizer(bos=None, eos=None), CalibrationData(sequences=2, window=5))


@pytest.mark.parametrize("options, field", [({"sequences": 0}, "sequences"), ({"window": 1}, "window"),
                                            ({"split": "dev"}, "split"), ({"batch_size": 0}, "batch_size")])
def test_calibration_data_rejects_bad_settings(options, field):
    with pytest.raises(ValueError, match=field):
        CalibrationData(**options)


def test_real_calibration_windows_are_seeded():
    tokenizer = load_tokenizer()
    data = CalibrationData(sequences=3, window=16)
    a, b = calibration_windows(tokenizer, data), calibration_windows(tokenizer, data)
    c = calibration_windows(tokenizer, CalibrationData(sequences=3, window=16, seed=1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a[:, 0].eq(tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id).all()


# --- a calibrated folder reloaded with romer.load ------------------------------------------------------------

BIG_VOCAB = dict(vocab_size=8192, num_hidden_layers=2, bos_token_id=0, eos_token_id=0, pad_token_id=0)


@pytest.mark.parametrize("kind, options", [
    ("romer", {"replace": {"variant": "split", "count": 1}}),
    ("romer", {"replace": {"variant": "replica", "count": 1}}),
    ("recalibrate", {"recalibrate": {"mode": "token"}}),
    ("recalibrate", {"recalibrate": {"apply_to": "selection"}}),
    ("balance", {}),
    ("maxnn", {}),
])
def test_romer_load_gives_exactly_the_in_memory_plans_outputs(tmp_path, kind, options):
    model = tiny("olmoe", **BIG_VOCAB)
    use_sorted_experts(model)  # the experts kernel romer.load gives the reloaded folder
    ids = windows(vocab=8192)
    plan = calibrator(kind, **options).fit(model, ids, CHIP)
    other = windows(4, 32, seed=5, vocab=8192)
    with apply(model, CHIP, plan), torch.no_grad():
        want = model(input_ids=other).logits
    out = save_calibrated(model, load_tokenizer(), CHIP, plan, tmp_path / "calibrated")
    assert [p.name for p in tmp_path.iterdir()] == ["calibrated"]  # no staging folder left beside it
    reloaded, _ = romer.load(out)
    with torch.no_grad():
        got = reloaded(input_ids=other).logits
    assert torch.equal(got, want)
    with torch.no_grad():
        clean = model(input_ids=other).logits
    assert not torch.equal(clean, want)  # the model itself was restored: the folder holds the chip, not it
