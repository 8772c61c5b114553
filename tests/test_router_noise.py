"""The account of router noise (romer.routing.router_noise): exact on a hand-built case, the anisotropy prediction
on synthetic data whose answer is known, the hooks on tiny models, and the study's figures on a zoo model."""

import math

import pytest
import torch

from romer.models.view import moe_layers
from romer.routing.router_noise import (InputMoments, LogitPairs, noise_account, record_logit_noise,
                                        record_router_inputs, router_noise_report, weight_moments)
from tests.tiny_models import tiny

# Two tokens x1 = (2, 1), x2 = (2, −1); router W = I (2 experts); ΔW = 0.1·I.
X = torch.tensor([[2.0, 1.0], [2.0, -1.0]])
W = torch.eye(2, dtype=torch.float64)
W_CHIP = 1.1 * W


def test_hand_built_two_expert_case_is_exact():
    """x̄ = (2, 0), E‖x‖² = 5 → anisotropy 4/5 = 0.8; cos(x1, x2) = (4 − 1)/5 = 0.6.
    Δz = ΔW·x: token 1 (0.2, 0.1), token 2 (0.2, −0.1). Systematic s = ΔW·x̄ = (0.2, 0): Σ s² = 0.04; total
    Σ_e E_t Δz² = 0.04 + 0.01 = 0.05 → systematic share 0.8 (here = the anisotropy, ΔW being isotropic).
    Expert 0's clean logit is constant (2) and expert 1's chip logit is 1.1 × its clean one: a per-expert affine
    map undoes both exactly → affine share 1. Logit SNR: Σ_e E z_c² = 4 + 1 = 5 over 0.05 → √100 = 10 (20 dB)."""
    moments = InputMoments(2)
    moments.update(X[:1])
    moments.update(X[1:])  # streamed in two batches
    assert moments.anisotropy == pytest.approx(0.8, abs=1e-12)
    assert moments.mean_cosine == pytest.approx(0.6, abs=1e-12)
    expected = {"logit_snr": 10.0, "logit_snr_db": 20.0, "systematic_share": 0.8, "affine_share": 1.0,
                "noise_ms": 0.025}
    from_weights = noise_account(weight_moments(moments, W, W_CHIP))
    pairs = LogitPairs(2)
    pairs.update(X.double() @ W.T, X.double() @ W_CHIP.T)
    from_logits = noise_account(pairs.moments())
    for account in (from_weights, from_logits):
        assert account == pytest.approx(expected, abs=1e-12)


def test_a_bias_adds_signal_not_noise():
    """A router bias b = (1, 1) shifts clean and chip logits alike, so Δz (and its shares) is unchanged, while the
    clean logits become z_c = (3, 2), (3, 0): E z_c0² = 9, E z_c1² = (4 + 0)/2 = 2 → SNR √((9 + 2) / 0.05)."""
    moments = InputMoments(2)
    moments.update(X)
    account = noise_account(weight_moments(moments, W, W_CHIP, bias=torch.ones(2)))
    assert account["systematic_share"] == pytest.approx(0.8)
    assert account["logit_snr"] == pytest.approx(math.sqrt(11 / 0.05))


def test_systematic_share_follows_the_anisotropy_for_isotropic_weight_noise():
    """x = x̄ + ε, ε ~ N(0, τ²·I_H), ΔW iid N(0, σ²). E[(ΔW_e·x̄)²] = σ²‖x̄‖², E[ΔW_e S ΔW_eᵀ] = σ²(‖x̄‖² + Hτ²),
    so the systematic share → ‖x̄‖² / (‖x̄‖² + Hτ²) = ‖x̄‖² / E‖x‖². With x̄ = (1, …, 1) (‖x̄‖² = H = 64) and
    τ = 1: 64 / 128 = 0.5. At τ = 0.5: 64 / (64 + 16) = 0.8. Sampling error: Σ_e over 4096 experts of σ²‖x̄‖²χ²₁
    has relative std √(2/4096) ≈ 2 %, so ± 0.04 is a > 3σ band."""
    gen = torch.Generator().manual_seed(3)
    hidden, experts = 64, 4096
    for tau, expected in ((1.0, 0.5), (0.5, 0.8)):
        x = 1.0 + tau * torch.randn(20000, hidden, generator=gen, dtype=torch.float64)
        moments = InputMoments(hidden)
        for chunk in x.split(5000):
            moments.update(chunk)
        assert moments.anisotropy == pytest.approx(expected, abs=0.01)
        w = torch.randn(experts, hidden, generator=gen, dtype=torch.float64)
        dw = 0.01 * torch.randn(experts, hidden, generator=gen, dtype=torch.float64)
        account = noise_account(weight_moments(moments, w, w + dw))
        assert account["systematic_share"] == pytest.approx(expected, abs=0.04)
        assert account["affine_share"] >= account["systematic_share"]


def test_streamed_moments_match_direct_computation_far_from_the_origin():
    """Inputs with a large common offset (anisotropy ≈ 1): the shifted accumulation keeps the covariance exact."""
    gen = torch.Generator().manual_seed(5)
    x = 1e4 + torch.randn(3000, 8, generator=gen, dtype=torch.float64)
    moments = InputMoments(8)
    for chunk in x.split(700):
        moments.update(chunk)
    assert torch.allclose(moments.mean, x.mean(0), rtol=0, atol=1e-9)
    assert torch.allclose(moments.covariance, torch.cov(x.T, correction=0), rtol=1e-6, atol=1e-6)
    unit = x / x.norm(dim=1, keepdim=True)
    gram = unit @ unit.T
    assert moments.mean_cosine == pytest.approx(float((gram.sum() - gram.trace()) / (3000 * 2999)), abs=1e-12)
    assert 0.999 < moments.anisotropy <= 1.0


@pytest.mark.parametrize("family", ["olmoe", "deepseek_v2"])
def test_first_moe_layer_noise_is_the_routers_own(family):
    """Perturb only the router weights (seeded): the first MoE layer's inputs are untouched, so the measured
    logit-noise account equals the weight account computed from the clean inputs' moments; the padded tokens
    do not count; hooks are gone afterwards."""
    model = tiny(family)
    gen = torch.Generator().manual_seed(9)
    ids = torch.randint(1, 63, (3, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[2, 7:] = 0
    layers = moe_layers(model)
    with torch.no_grad(), record_router_inputs(model) as reference:
        model(input_ids=ids, attention_mask=mask)
        model(input_ids=ids[:1])
    assert reference[0].moments.n == int(mask.sum()) + 12
    clean = [layer.router_weight.detach().clone() for layer in layers]
    try:
        with torch.no_grad():
            for layer in layers:
                layer.router_weight.add_(0.3 * layer.router_weight.std() * torch.randn(
                    layer.router_weight.shape, generator=gen))
            with record_logit_noise(model, reference) as noise:
                model(input_ids=ids, attention_mask=mask)
                model(input_ids=ids[:1])
    finally:
        with torch.no_grad():
            for layer, w in zip(layers, clean):
                layer.router_weight.copy_(w)
    rows = router_noise_report(reference, noise)
    first = rows[0]
    for key in ("logit_snr", "systematic_share", "affine_share"):
        assert first["measured"][key] == pytest.approx(first["weight"][key], rel=1e-4)
    assert first["router_own_share"] == pytest.approx(1.0, rel=1e-4)
    for row in rows:
        assert 0 <= row["weight"]["systematic_share"] <= row["weight"]["affine_share"] <= 1
        assert 0 <= row["anisotropy"] <= 1 and row["predicted_share"] == row["anisotropy"]
    assert not model._forward_pre_hooks and not model._forward_hooks
    assert all(not layer.router._forward_hooks for layer in layers)


def test_a_chip_run_over_other_tokens_is_refused():
    model = tiny("olmoe")
    ids = torch.randint(1, 63, (2, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), record_router_inputs(model) as reference:
        model(input_ids=ids)
    with pytest.raises(Exception, match="reference"):
        with torch.no_grad(), record_logit_noise(model, reference):
            model(input_ids=ids[:1])
    with torch.no_grad(), record_logit_noise(model, reference) as noise:
        pass
    with pytest.raises(Exception, match="not the same tokens"):
        router_noise_report(reference, noise)
    assert all(not layer.router._forward_hooks for layer in moe_layers(model))


@pytest.fixture(scope="module")
def studies():
    """The routing study of olmoe-tiny on a short validation text at PCM programming noise ×1 and ×10 (one chip)."""
    from romer.data import load_text
    from romer.studies.routing_study import routing_study
    from romer.models import load_model
    from romer.noise.chip import Chip

    model, tokenizer = load_model("olmoe-tiny")
    text = load_text("validation")[:4000]
    out = {}
    for scale in (1.0, 10.0):
        chip = Chip.from_options("pcm", prog_noise_scale=scale, read_noise_scale=scale)
        out[scale] = routing_study(model, tokenizer, text, chip, chips=1, window=256)
        out[scale].pop("records")
    return out


def test_study_reports_snr_shares_and_loads_in_range(studies):
    import json

    from romer.report.studies import physical_rows

    for result in studies.values():
        json.dumps(result)  # JSON-serialisable, as `romer stats --json` writes it
        chip = result["per_chip"][0]
        assert {"router", "routed_experts"} <= set(chip["snr"])
        for row in result["per_layer"]:
            assert 0 <= row["anisotropy"] <= 1 and -1 <= row["mean_cosine"] <= 1
            for key in ("systematic_share", "affine_share", "measured_systematic_share", "measured_affine_share"):
                assert 0 <= row[key]["mean"] <= 1, key
            assert row["systematic_share"]["mean"] <= row["affine_share"]["mean"] + 1e-12
            assert 0 < row["clean_utilisation"] <= 1 and 0 < row["utilisation"]["mean"] <= 1
        # olmoe-tiny's first MoE layer reads attention output only (digital at placement moe): all its logit noise
        # is the router's own
        assert result["per_layer"][0]["router_own_share"]["mean"] == pytest.approx(1.0, rel=1e-6)
        s = result["summary"]
        # ROMER's replica variant drives both arrays with every hot token: no relief of the busiest array
        assert s["throughput_replica"]["mean"] == pytest.approx(s["throughput_noisy"]["mean"])
        assert s["throughput_shared"]["mean"] >= s["throughput_noisy"]["mean"]
        assert len(physical_rows(result)) == len(result["per_layer"]) == 4


def test_snr_falls_as_the_noise_scale_grows(studies):
    low, high = (studies[s]["per_layer"] for s in (1.0, 10.0))
    for a, b in zip(low, high):
        for key in ("router_snr_db", "experts_snr_db", "logit_snr_db"):
            assert a[key]["mean"] > b[key]["mean"] + 10, key  # ×10 noise amplitude ≈ −20 dB; ask for 10
    assert studies[1.0]["summary"]["router_snr_db"]["mean"] > studies[10.0]["summary"]["router_snr_db"]["mean"]


def test_pooled_weight_snr_golden():
    """Router of layer 0: P_W = 4, P_ΔW = 1 → SNR 2 (6.02 dB). Experts of layer 0: (3, 0.5) and (1, 0.5) pool to
    √(4 / 1) = 2, not the mean of √6 and √2; experts of layer 1: (9, 1) → 3 (9.54 dB). All experts: √(13 / 2)."""
    from romer.noise.snr import TensorSNR, summarize_snr

    tensors = [TensorSNR("r0", "router", 0, 4.0, 1.0), TensorSNR("e0a", "routed_experts", 0, 3.0, 0.5),
               TensorSNR("e0b", "routed_experts", 0, 1.0, 0.5), TensorSNR("e1", "routed_experts", 1, 9.0, 1.0)]
    out = summarize_snr(tensors)
    assert out["router"]["overall"]["snr"] == 2.0
    assert out["router"]["overall"]["snr_db"] == pytest.approx(20 * math.log10(2))
    experts = out["routed_experts"]
    assert [(r["layer"], r["snr"], r["tensors"]) for r in experts["layers"]] == [(0, 2.0, 2), (1, 3.0, 1)]
    assert experts["overall"]["snr"] == pytest.approx(math.sqrt(13 / 2))
    assert experts["overall"]["min_tensor_snr_db"] == pytest.approx(10 * math.log10(2))


def test_weight_snr_reads_the_programmed_and_clean_tensors():
    """Multiplicative Gaussian noise w̃ = w(1 + ηN): per tensor ‖ΔW‖² = η² Σ w² N², i.e. SNR ≈ 1/η = 10 (20 dB)
    at η = 0.1; the energies equal those computed from a copy of the clean weights taken before programming."""
    from romer.noise.chip import Chip, program
    from romer.noise.snr import energies, weight_snr

    model = tiny("olmoe")
    params = dict(model.named_parameters())
    before = {name: p.detach().clone() for name, p in params.items()}
    with program(model, Chip.from_options("gaussian-mult", eta=0.1, placement="moe")) as programmed:
        rows = weight_snr(programmed)
        for row in rows:
            assert (row.signal, row.noise) == pytest.approx(energies(before[row.name], params[row.name].detach()))
    assert {r.group for r in rows} == {"router", "routed_experts"} and {r.layer for r in rows} == {0, 1, 2}
    experts = [r for r in rows if r.group == "routed_experts"]
    assert all(8 < r.snr < 12 for r in experts)
    assert torch.equal(params[rows[0].name], before[rows[0].name])  # restored


def test_routing_share_is_withheld_where_the_chip_did_not_raise_ppl():
    """A routing share of a gap whose 95 % interval over chips reaches 0 is not reported."""
    from romer.estimators import interval
    from romer.studies.routing_study import _withhold_shares

    share = {"mean": 1.94, "std": 2.84}
    raised = _withhold_shares({"routing_share": dict(share), "damage": interval([5.0, 6.0, 7.0])})
    assert raised["routing_share"] == share
    flat = _withhold_shares({"routing_share": dict(share), "damage": interval([-0.5, 0.4, 0.3])})
    assert flat["routing_share"]["mean"] is None and "did not raise PPL" in flat["routing_share"]["withheld"]


def test_study_summaries_leave_out_infinite_values():
    """A router kept digital has an infinite weight SNR: the mean over chips is taken over finite values only."""
    import math

    from romer.studies.routing_study import _mean_std

    assert _mean_std([math.inf, math.inf]) == {"mean": None, "std": None}
    assert _mean_std([1.0, math.inf, 3.0, None, math.nan]) == {"mean": 2.0, "std": 2 ** 0.5}
