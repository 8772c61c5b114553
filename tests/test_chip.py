"""Programming a model onto a chip: placement, determinism, independence, exact restore."""

import pytest
import torch

from romer.errors import UserError
from romer.noise.chip import Chip, program, tensor_generator
from romer.noise.placement import NAMED_PLACEMENTS, analog_weights, parse_placement
from tests.tiny_models import tiny


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(model, before):
    return {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}


@pytest.fixture(params=["olmoe", "qwen2_moe", "deepseek_v2"])
def model(request):
    return tiny(request.param)


def test_moe_placement_perturbs_exactly_router_and_experts(model):
    before = snapshot(model)
    with program(model, Chip.from_options("pcm", placement="moe", seed=3, t_inference=3600)):
        touched = changed(model, before)
    expected = {w.name for w in analog_weights(model, NAMED_PLACEMENTS["moe"], strict=False)}
    assert touched == expected
    assert all(".mlp." in name and "bias" not in name for name in touched)
    assert not any("self_attn" in n or "embed" in n or "lm_head" in n or "norm" in n for n in touched)


def test_all_placement_adds_attention_and_dense_layers(model):
    before = snapshot(model)
    with program(model, Chip.from_options("gaussian", placement="all", seed=1)):
        touched = changed(model, before)
    assert any("self_attn" in n for n in touched)
    assert not any("embed" in n or "lm_head" in n or "norm" in n or n.endswith("bias") for n in touched)
    if model.config.model_type == "deepseek_v2":
        assert any(n.startswith("model.layers.0.mlp.") for n in touched), "the dense first layer is analog"


def test_restore_is_bit_identical(model):
    before = snapshot(model)
    handle = program(model, Chip.from_options("pcm", placement="all", seed=5))
    assert changed(model, before)
    handle.restore()
    assert not changed(model, before)
    handle.restore()  # a second restore is a no-op
    assert not changed(model, before)


def test_same_seed_same_weights_other_seed_other_weights(model):
    chip = Chip.from_options("pcm", seed=11, t_inference=86400)
    with program(model, chip):
        first = snapshot(model)
    with program(model, chip):
        again = snapshot(model)
    with program(model, chip.with_seed(12)):
        other = snapshot(model)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert changed_between(first, other)


def changed_between(a, b):
    return {k for k in a if not torch.equal(a[k], b[k])}


def test_tensors_draw_independently():
    # two identical tensors under different names get different noise; the generator depends on (seed, name)
    a, b = tensor_generator(0, "x.weight"), tensor_generator(0, "y.weight")
    assert not torch.equal(torch.randn(100, generator=a), torch.randn(100, generator=b))
    c, d = tensor_generator(0, "x.weight"), tensor_generator(1, "x.weight")
    assert not torch.equal(torch.randn(100, generator=c), torch.randn(100, generator=d))


def test_noise_of_a_tensor_does_not_depend_on_the_placement():
    model = tiny("olmoe")
    name = "model.layers.1.mlp.experts.down_proj"
    with program(model, Chip.from_options("pcm", placement="routed_experts", seed=2)):
        alone = model.get_parameter(name).detach().clone()
    with program(model, Chip.from_options("pcm", placement="all", seed=2)):
        together = model.get_parameter(name).detach().clone()
    assert torch.equal(alone, together)


def test_programming_twice_is_refused_and_restore_on_exit():
    model = tiny("olmoe")
    before = snapshot(model)
    chip = Chip.from_options("gaussian", seed=0)
    with program(model, chip):
        with pytest.raises(UserError, match="already programmed"):
            program(model, chip)
    assert not changed(model, before)


def test_global_rng_untouched():
    model = tiny("olmoe")
    state = torch.random.get_rng_state()
    with program(model, Chip.from_options("pcm", seed=0)):
        pass
    assert torch.equal(state, torch.random.get_rng_state())


@pytest.mark.parametrize("spec, message", [("attention,bogus", "bad placement"), ("", "bad placement")])
def test_bad_placements_are_user_errors(spec, message):
    with pytest.raises(UserError, match=message):
        parse_placement(spec)


def test_explicit_group_missing_from_model_is_an_error():
    with pytest.raises(UserError, match="shared_experts match no weight"):
        program(tiny("olmoe"), Chip.from_options("pcm", placement="shared_experts"))


def test_chip_serialises():
    chip = Chip.from_options("pcm", placement="all", mapping="channel", seed=4, t_inference=3600,
                             prog_noise_scale=3)
    assert Chip.from_dict(chip.to_dict()) == chip
    assert chip.to_dict()["placement"] == "all" and chip.to_dict()["preset"]["prog_noise_scale"] == 3


def test_doubling_point_golden():
    from romer.experiment.sensitivity import doubling_point

    # see the docstring: ln 200 sits 0.5632 of the way from ln 150 to ln 250 → η = 0.1 + 0.05632
    assert doubling_point([0.05, 0.1, 0.2], [120.0, 150.0, 250.0], 100.0) == pytest.approx(0.156317, abs=1e-6)
    assert doubling_point([0.05, 0.1], [120.0, 150.0], 100.0) is None


@pytest.mark.parametrize("store", ["disk", "memory"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_restore_is_exact_from_either_store_in_every_dtype(store, dtype):
    model = tiny("qwen2_moe").to(dtype)
    before = snapshot(model)
    with program(model, Chip.from_options("pcm", placement="all", seed=9), clean_store=store):
        assert changed(model, before)
    assert not changed(model, before)


def test_unknown_clean_store_is_refused():
    with pytest.raises(UserError, match="unknown clean store"):
        program(tiny("olmoe"), Chip.from_options("pcm"), clean_store="cloud")
