"""The IO model of an analog matmul (romer.noise.io) by hand, and its hooks on a model (romer.noise.io_hooks)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from romer.errors import UserError
from romer.models.sorted_experts import use_sorted_experts
from romer.noise.chip import Chip, program
from romer.noise.io import (
    AIHWKIT_DEFAULT,
    HWA_STANDARD,
    IOConfig,
    analog_matmul,
    get_io,
    static_range,
    weight_scales,
)
from tests.tiny_models import tiny

# a non-ideal config with nothing switched on but what a test switches on: no output (not ideal: out_bound huge)
PLAIN = IOConfig(name="plain", out_bound=1e9)


def io(**knobs) -> IOConfig:
    return dataclasses.replace(PLAIN, **knobs)


def test_ideal_is_exactly_x_times_w_transposed():
    x = torch.randn(5, 7, 33, generator=torch.Generator().manual_seed(0))
    w = torch.randn(9, 33, generator=torch.Generator().manual_seed(1))
    assert IOConfig.ideal().is_ideal and get_io("ideal").is_ideal
    assert torch.equal(analog_matmul(x, w, IOConfig.ideal()), x @ w.T)
    assert not AIHWKIT_DEFAULT.is_ideal and not HWA_STANDARD.is_ideal


def test_two_bit_dac_by_hand():
    """2 bits: 2^2 − 2 = 2 steps across [−1, 1], levels −1, 0, 1; abs-max per token; identity weights."""
    x = torch.tensor([[0.2, -0.6, 1.0, 0.49], [0.4, -1.2, 2.0, 0.98]])  # second row: 2 × the first
    y = analog_matmul(x, torch.eye(4), io(dac_bits=2))
    assert torch.equal(y, torch.tensor([[0.0, -1.0, 1.0, 0.0], [0.0, -2.0, 2.0, 0.0]]))


def test_adc_rounds_and_clips_by_hand():
    """3-bit ADC with bound 3: 6 steps across [−3, 3], Δ = 1; ŷ = 2.2 → 2; ŷ = 4 → clipped to 3."""
    w = torch.ones(1, 4)
    cfg = io(adc_bits=3, out_bound=3.0)
    assert cfg.output_step == 1.0
    y = analog_matmul(torch.tensor([[1.0, 1.0, 0.2, 0.0], [1.0, 1.0, 1.0, 1.0]]), w, cfg)
    assert torch.equal(y, torch.tensor([[2.0], [3.0]]))


def test_tiles_are_digitised_separately_and_summed():
    """Two tiles of two inputs: tile 0 ŷ = 1.5 → 2 (half to even), ×s 1; tile 1 Ŵ = W/0.5, ŷ = 0.75 → 1,
    ×s 0.5: 2.5, where one tile would read 1.875 → 2."""
    w, x = torch.tensor([[1.0, 1.0, 0.5, 0.5]]), torch.tensor([[1.0, 0.5, 1.0, -0.25]])
    cfg = io(adc_bits=3, out_bound=3.0, tile_rows=2)
    assert analog_matmul(x, w, cfg).item() == 2.5
    assert analog_matmul(x, w, dataclasses.replace(cfg, tile_rows=4)).item() == 2.0


def test_weight_scaling_per_tile_or_column():
    w = torch.tensor([[0.5, -2.0, 1.0], [0.25, 0.0, 0.0], [0.0, 0.0, 0.0]])
    tile, column = weight_scales(w, io(tile_rows=2)), weight_scales(w, io(tile_rows=2, weight_scaling="column"))
    assert [s.tolist() for s in tile] == [[2.0, 2.0, 2.0], [1.0, 1.0, 1.0]]
    assert [s.tolist() for s in column] == [[2.0, 0.25, 1.0], [1.0, 1.0, 1.0]]  # an all-zero column: 1
    blocks = weight_scales(w, io(tile_rows=2, tile_columns=1))[0]  # one output per tile: its own abs-max
    assert blocks.tolist() == [2.0, 0.25, 1.0]


def test_iterative_bound_management_by_hand():
    """Σ of 4 ones = 4 clips at bound 3; halving the input gives ŷ = 2 → y = 2·2 = 4 exactly. With a 7-bit DAC
    the factor stops at 16 > 0.25/(2/126) = 15.75: 64 ones read x̂ = round(63/16)/63 = 4/63, ŷ = 4.06 → 3,
    y = 3·16 = 48."""
    cfg = io(out_bound=3.0, bound_management="iterative")
    assert analog_matmul(torch.ones(1, 4), torch.ones(1, 4), cfg).item() == 4.0
    assert analog_matmul(torch.ones(1, 4), torch.ones(1, 4), io(out_bound=3.0)).item() == 3.0
    seven = dataclasses.replace(cfg, dac_bits=7)
    assert seven.bound_factor_limit == pytest.approx(15.75)
    rows = torch.stack([torch.ones(64), torch.zeros(64).index_fill_(0, torch.tensor([0]), 1.0)])
    assert analog_matmul(rows, torch.ones(1, 64), seven).flatten().tolist() == [48.0, 1.0]  # row 2 never clips


def test_static_input_range_clips_beyond_the_percentile():
    x = torch.arange(1.0, 101.0).reshape(1, 100)
    assert static_range(x, 50.0) == 50.0 and static_range(x, 100.0) == 100.0
    cfg = io(input_range="static", static_percentile=50.0)
    y = analog_matmul(x, torch.eye(100), cfg)  # calibrated on x itself: everything above 50 reads 50
    torch.testing.assert_close(y, x.clamp(max=50.0), rtol=1e-6, atol=0)
    fixed = analog_matmul(torch.tensor([[10.0, -80.0]]), torch.eye(2), cfg, ranges=[40.0])
    torch.testing.assert_close(fixed, torch.tensor([[10.0, -40.0]]), rtol=1e-6, atol=0)


def test_output_noise_std_in_output_units():
    """σ = 0.1 array units: on x̂ = x/r, Ŵ = W/s the output noise in y is σ·s·r (here s = 2, r = 3)."""
    x = torch.full((20000, 2), 3.0)
    w = torch.tensor([[2.0, 1.0]])
    y = analog_matmul(x, w, io(out_noise=0.1), torch.Generator().manual_seed(0)) - 9.0
    assert y.mean().abs() < 4 * 0.6 / 20000**0.5
    assert y.std().item() == pytest.approx(0.6, rel=0.03)  # sample std's sd ≈ σ/√(2N) = 0.5 %


def test_bad_configs_are_user_errors(tmp_path):
    for knobs in (dict(dac_bits=1), dict(adc_bits=40), dict(tile_rows=0), dict(out_noise=-1),
                  dict(input_range="percentile"), dict(bound_management="iterative", out_bound=0.0),
                  dict(static_percentile=0.0), dict(dac_bits=7.5)):
        with pytest.raises(UserError):
            IOConfig(**knobs)
    with pytest.raises(UserError, match="unknown io"):
        get_io("adc9")
    (tmp_path / "mine.yaml").write_text("base: hwa-standard\nadc_bits: 6\n")
    mine = get_io(str(tmp_path / "mine.yaml"))
    assert (mine.name, mine.adc_bits, mine.dac_bits, mine.out_bound) == ("mine", 6, 8, 10.0)
    (tmp_path / "bad.yaml").write_text("adc_bit: 6\n")
    with pytest.raises(UserError, match="adc_bit"):
        get_io(str(tmp_path / "bad.yaml"))


# --- on a model ---------------------------------------------------------------------------------------------


def _model_and_ids(family="olmoe"):
    model = tiny(family)
    use_sorted_experts(model)
    return model, torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _replaced_forwards(model):
    return [name for name, m in model.named_modules() if "forward" in m.__dict__]


def test_ideal_io_installs_nothing_and_changes_no_number():
    model, ids = _model_and_ids("qwen2_moe")
    chip = Chip.from_options("pcm", placement="all", seed=3)
    assert chip.io.is_ideal and "io" not in chip.to_dict()  # stored chips and config hashes stay as they were
    with program(model, chip) as handle:
        plain = _logits(model, ids)
        assert handle.io_hooks is None and not _replaced_forwards(model)
    with program(model, Chip.from_options("pcm", placement="all", seed=3, io="ideal")):
        assert torch.equal(_logits(model, ids), plain)


@pytest.mark.parametrize("family", ["olmoe", "qwen2_moe", "deepseek_v2", "gpt_oss"])
def test_io_chip_is_reproducible_and_restored(family):
    model, ids = _model_and_ids(family)
    clean = _logits(model, ids)
    chip = Chip.from_options("gaussian", placement="all", io="aihwkit-default", eta=0.0, seed=1)
    with program(model, chip):
        first, second = _logits(model, ids), _logits(model, ids)
    assert not _replaced_forwards(model) and torch.equal(_logits(model, ids), clean)
    with program(model, chip):
        assert torch.equal(_logits(model, ids), first)  # the same chip, call for call
    assert not torch.equal(first, second)  # the output noise of a later call is a new draw
    with program(model, chip.with_seed(2)):
        assert not torch.equal(_logits(model, ids), first)
    cosine = F.cosine_similarity(first.flatten(), clean.flatten(), dim=0)
    assert 0.5 < cosine < 1.0  # a perturbation of the clean model, not another model


def test_io_follows_the_placement():
    """Router only: one state per layer's router, called once per forward; experts and attention untouched."""
    model, ids = _model_and_ids("olmoe")
    with program(model, Chip.from_options("gaussian", placement="router", io="aihwkit-default", eta=0.0)) as h:
        _logits(model, ids)
        assert sorted(h.io_hooks.states) == [f"model.layers.{i}.mlp.gate.weight" for i in range(3)]
        assert {s.calls for s in h.io_hooks.states.values()} == {1}
        assert _replaced_forwards(model) == [f"model.layers.{i}.mlp.gate" for i in range(3)]


def test_router_logits_go_through_the_io_path():
    """The router's logits under IO equal analog_matmul of the router weight (no output noise: deterministic)."""
    model, ids = _model_and_ids("olmoe")
    cfg = dataclasses.replace(AIHWKIT_DEFAULT, out_noise=0.0)
    router = model.model.layers[0].mlp.gate
    x = torch.randn(6, router.weight.shape[-1], generator=torch.Generator().manual_seed(4))
    with torch.no_grad(), program(model, Chip.from_options("gaussian", placement="router", io=cfg, eta=0.0)):
        logits = router(x)[0]
    assert torch.equal(logits, analog_matmul(x, router.weight, cfg))  # olmoe's router returns its raw logits first
    assert not torch.equal(logits, x @ router.weight.T)


def test_fused_experts_go_through_the_io_path_per_expert_and_tile():
    """The experts kernel under IO = each token's expert evaluated with analog_matmul, tile by tile (16 inputs per
    tile on hidden 32 / intermediate 48: 2 and 3 tiles), routing weight applied digitally after the down ADC."""
    model, _ = _model_and_ids("olmoe")
    cfg = IOConfig(name="t", dac_bits=6, adc_bits=10, out_bound=20.0, tile_rows=16, weight_scaling="column")
    experts = model.model.layers[1].mlp.experts
    x = torch.randn(5, experts.gate_up_proj.shape[-1], generator=torch.Generator().manual_seed(5))
    index = torch.tensor([[1, 3], [3, 0], [7, 1], [1, 2], [0, 3]])
    weights = torch.rand(5, 2, generator=torch.Generator().manual_seed(6))
    with torch.no_grad(), program(model, Chip.from_options("gaussian", placement="moe", io=cfg, eta=0.0)):
        out = experts(x, index, weights)
        inter = experts.down_proj.shape[-1]
        for row in range(5):
            expected = torch.zeros(x.shape[-1])
            for e, g in zip(index[row].tolist(), weights[row].tolist()):
                gate_up = analog_matmul(x[row:row + 1], experts.gate_up_proj[e], cfg)[0]
                inner = F.silu(gate_up[:inter]) * gate_up[inter:]
                expected += g * analog_matmul(inner[None], experts.down_proj[e], cfg)[0]
            torch.testing.assert_close(out[row], expected, rtol=1e-4, atol=1e-4)


# --- chips, configs and the command line -----------------------------------------------------------------------

# load_config("default").config_hash computed by romer before chip.io existed (main at b3e4b6c): stores stay valid
DEFAULT_CONFIG_HASH = "80587323d2ccb23a24a483eda374ffca98ac1b76064ade09d3258c4734de0e59"  # the first-look default.yaml's hash, computed by the code before the IO model (branch first-look, d5cf14e)


def test_chip_dict_round_trip_keeps_the_io_model():
    chip = Chip.from_options("pcm", io="hwa-standard", seed=4)
    again = Chip.from_dict(chip.to_dict())
    assert again == chip and again.io == HWA_STANDARD
    assert Chip.from_dict(Chip.from_options("pcm").to_dict()).io.is_ideal


def test_config_io_axis_and_unchanged_hash_without_it():
    from romer.experiment.config_file import load_config

    assert load_config("default").config_hash == DEFAULT_CONFIG_HASH
    assert load_config("default", ["chip.io=[ideal]"]).config_hash == DEFAULT_CONFIG_HASH
    both = load_config("default", ["chip.io=[ideal, hwa-standard]", "chip.chips=2", "models=[olmoe-tiny]"])
    assert both.config_hash != DEFAULT_CONFIG_HASH
    groups = both.groups()
    assert both.trial_count() == 2 * load_config("default", ["chip.chips=2", "models=[olmoe-tiny]"]).trial_count()
    assert [g.preset for g in groups] == ["pcm×10"] * 2 + ["pcm×10 + io hwa-standard"] * 2
    assert "io" not in groups[0].chip and Chip.from_dict(groups[2].chip).io == HWA_STANDARD
    keys = [k for g in groups for k in g.trial_keys().values()]
    assert len(keys) == len(set(keys))
    with pytest.raises(UserError):
        load_config("default", ["chip.io=[adc9]"])


def test_cli_io_option():
    import json

    from typer.testing import CliRunner

    from romer.cli.main import app

    cli = CliRunner(env={"COLUMNS": "200"})
    shown = cli.invoke(app, ["noise", "show", "pcm", "--io", "hwa-standard", "--json", "-"])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["io"]["dac_bits"] == 8
    text = cli.invoke(app, ["noise", "show", "pcm", "--io", "aihwkit-default"])
    assert "9 bit" in text.stdout and "iterative" in text.stdout
    for args in (["noise", "show", "pcm", "--io", "adc9"],
                 ["eval", "--model", "olmoe-tiny", "--io", "hwa-standard"]):  # an IO model needs a chip (--preset)
        bad = cli.invoke(app, args)
        assert bad.exit_code == 2 and "Traceback" not in bad.output and len(bad.output.strip().splitlines()) == 1


def test_runner_state_puts_the_io_model_on_while_entered():
    """romer run evaluates on a BaseState (programmed weights copied in and out): the IO hooks come with enter()
    and go with leave(), and the entered model computes what program() gives for the same chip."""
    from romer.experiment.states import BaseState

    model, ids = _model_and_ids("olmoe")
    chip = Chip.from_options("pcm", placement="moe", io="aihwkit-default", seed=2)
    with program(model, chip):
        expected = _logits(model, ids)
    state = BaseState(model, chip)
    assert not _replaced_forwards(model)
    state.enter()
    assert _replaced_forwards(model) and torch.equal(_logits(model, ids), expected)
    state.leave()
    assert not _replaced_forwards(model)


# --- parts a plan keeps digital (MaxNN) ---------------------------------------------------------------------------

NOISY_IO = IOConfig(name="t", dac_bits=6, adc_bits=8, out_bound=20.0, out_noise=0.05, tile_rows=16)


def test_maxnn_digital_experts_and_attention_run_without_the_periphery():
    """Under IO, rows routed only to a plan's digital experts get the exact product (exact weights: η = 0), rows
    with an analog expert do not; digital attention projections are exact too; restore() takes everything off."""
    from romer.calibrate import Plan, apply

    model, _ = _model_and_ids("olmoe")
    chip = Chip.from_options("gaussian", placement="all", io=NOISY_IO, eta=0.0)
    plan = Plan(method={}, chip=chip.to_dict(), model={}, digital_experts={1: [1, 3]}, digital_attention=True)
    experts, attention = model.model.layers[1].mlp.experts, model.model.layers[1].self_attn
    x = torch.randn(3, experts.gate_up_proj.shape[-1], generator=torch.Generator().manual_seed(7))
    index, weights = torch.tensor([[1, 3], [3, 1], [0, 3]]), torch.tensor([[0.7, 0.3], [0.5, 0.5], [0.6, 0.4]])
    with torch.no_grad():
        exact = experts(x, index, weights)
        exact_q = attention.q_proj(x)
        with apply(model, chip, plan):
            served = experts(x, index, weights)
            served_q = attention.q_proj(x)
            router_logits = model.model.layers[1].mlp.gate(x)[0]
        torch.testing.assert_close(served[:2], exact[:2], rtol=1e-5, atol=1e-6)  # both experts digital
        assert not torch.allclose(served[2], exact[2], rtol=1e-3, atol=1e-3)  # expert 0 analog: the periphery
        assert torch.equal(served_q, exact_q)
        assert not torch.allclose(router_logits, model.model.layers[1].mlp.gate(x)[0])  # the router stays analog
    assert not _replaced_forwards(model)


def test_maxnn_digital_modulelist_experts_run_without_the_periphery():
    from romer.calibrate import Plan, apply
    from tests.test_oracle import FakeDeepseekLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = FakeDeepseekLM().eval()
    for block in model.model.layers:
        block.self_attn = torch.nn.Module()  # no attention weights: the fake is MoE blocks only
    model.get_input_embeddings, model.get_output_embeddings = (lambda: model.embed), (lambda: model.head)
    chip = Chip.from_options("gaussian", placement="moe", io=NOISY_IO, eta=0.0)
    plan = Plan(method={}, chip=chip.to_dict(), model={}, digital_experts={0: [2]})
    mlp = model.model.layers[0].mlp.experts
    x = torch.randn(4, 32, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        exact = [mlp[e].gate_proj(x) for e in (2, 3)]
        with apply(model, chip, plan):
            served = [mlp[e].gate_proj(x) for e in (2, 3)]
    assert torch.equal(served[0], exact[0]) and not torch.allclose(served[1], exact[1], rtol=1e-3, atol=1e-3)
    assert not _replaced_forwards(model)


# --- a plan fitted behind another periphery (MethodConfig.fit_io) ------------------------------------------------

def test_a_plan_fitted_with_fit_io_is_the_plan_fitted_on_that_periphery():
    """fit_io: ideal fits P1 on the chip's smooth logits (the same plan as on the chip with ideal IO) and keeps
    the chip's seed; without it, P1 is fitted on the ADC-quantised logits and differs."""
    from romer.calibrate import Calibrator
    from romer.calibrate.config import MethodConfig
    from tests.test_in_service import decided, windows

    model, ids = tiny("olmoe"), windows()
    chip = Chip.from_options("pcm", placement="moe", seed=2, prog_noise_scale=10.0, read_noise_scale=10.0,
                             io=io(dac_bits=5, adc_bits=5, out_bound=4.0))

    def fit(on, **options):
        return Calibrator(MethodConfig(name="p1", kind="recalibrate", calibration={"batch_size": 3},
                                       **options)).fit(model, ids, on)

    smooth, there, behind = fit(chip, fit_io="ideal"), fit(chip.with_io("ideal")), fit(chip)
    assert smooth.chip == there.chip == chip.with_io("ideal").to_dict() and smooth.chip["seed"] == 2
    assert decided(smooth) == decided(there) != decided(behind)
    with pytest.raises(ValueError, match="not an IO preset"):
        MethodConfig(name="x", kind="recalibrate", fit_io="loud")


def test_column_scale_ratio_is_one_on_exact_weights_and_grows_with_noise():
    """The IO study's s_read / s_exact: exactly 1 when programming changes nothing (η = 0), above 1 when the
    read-back weights carry noise (their column abs-max grows), and the model is restored after."""
    from romer.studies.io_study import column_scale_ratio

    model, ids = _model_and_ids("olmoe")
    before = _logits(model, ids)
    assert column_scale_ratio(model, Chip.from_options("gaussian", placement="experts", io=HWA_STANDARD,
                                                       eta=0.0)) == 1.0
    assert column_scale_ratio(model, Chip.from_options("gaussian", placement="experts", io=HWA_STANDARD,
                                                       eta=0.3)) > 1.05
    assert torch.equal(_logits(model, ids), before)


def test_the_runner_scores_maxnn_under_io_as_apply_does(tmp_path):
    """The shared evaluator's MaxNN (digital experts swapped into the programmed base state) scores exactly as a
    fresh ``apply`` of the same plan on a chip with an IO periphery: the digital experts run without it there too.
    A deterministic periphery (abs-max inputs, no output noise), so that every forward call reads the same."""
    from romer.calibrate import Calibrator, MethodConfig, apply
    from romer.eval import perplexity
    from romer.eval.spec import EvalSpec
    from romer.experiment.config_file import load_config
    from romer.experiment.evaluate import Evaluator

    quiet = tmp_path / "quiet-io.yaml"
    quiet.write_text("base: aihwkit-default\nout_noise: 0.0\n")
    config = load_config("default", ["models=[olmoe-tiny]", "chip.chips=1", f"chip.io=[{quiet}]",
                                     "eval.max_tokens=512", "eval.dtype=float32", "methods=[noisy, maxnn-12.5%]",
                                     "calibration.sequences=2"])
    (group,) = config.groups()
    evaluator = Evaluator()
    rows = {row["method"]: row for row in evaluator(group)}
    chip = Chip.from_dict(group.chip)
    model, tokenizer = evaluator.model("olmoe-tiny")  # the same model object, back to its clean weights
    text = EvalSpec(max_tokens=512).text(tokenizer)
    method = MethodConfig.model_validate(group.methods[1])
    calibrator = Calibrator(method)
    plan = calibrator.fit(model, calibrator.windows(tokenizer), chip)
    with torch.no_grad(), apply(model, chip, plan):
        ppl = perplexity(model, tokenizer, text, window=512, batch_size=8).ppl
    assert ppl == pytest.approx(rows["maxnn-12.5%"]["ppl"], rel=1e-9)
    assert rows["maxnn-12.5%"]["ppl"] != rows["noisy"]["ppl"]
