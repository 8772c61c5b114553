"""Programming a model onto a chip: placement, determinism, independence, exact restore."""

import pytest
import torch

from romer.errors import UserError
from romer.noise.chip import Chip, program, tensor_generator
from romer.noise.placement import parse_placement
from tests.tiny_models import tiny


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(model, before):
    return {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}


@pytest.fixture(params=["olmoe", "qwen2_moe", "deepseek_v2"])
def model(request):
    return tiny(request.param)


def _names(layers, *suffixes):
    return {f"model.layers.{i}.{s}" for i in layers for s in suffixes}


# The weight matrices of each placement group in the tiny models (tests/tiny_models.py: 3 decoder layers;
# deepseek_v2's layer 0 is dense, first_k_dense_replace = 1), written out from the HF module layout.
EXPERTS = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")
GROUP_WEIGHTS = {
    "olmoe": {
        "router": _names((0, 1, 2), "mlp.gate.weight"),
        "routed_experts": _names((0, 1, 2), *EXPERTS),
        "shared_experts": set(),
        "dense_mlp": set(),
        "attention": _names((0, 1, 2), *(f"self_attn.{p}_proj.weight" for p in "qkvo")),
        "embedding": {"model.embed_tokens.weight"},
        "lm_head": {"lm_head.weight"},
    },
    "qwen2_moe": {
        "router": _names((0, 1, 2), "mlp.gate.weight"),
        "routed_experts": _names((0, 1, 2), *EXPERTS),
        "shared_experts": _names((0, 1, 2), "mlp.shared_expert.gate_proj.weight", "mlp.shared_expert.up_proj.weight",
                                 "mlp.shared_expert.down_proj.weight", "mlp.shared_expert_gate.weight"),
        "dense_mlp": set(),
        "attention": _names((0, 1, 2), *(f"self_attn.{p}_proj.weight" for p in "qkvo")),
        "embedding": {"model.embed_tokens.weight"},
        "lm_head": {"lm_head.weight"},
    },
    "deepseek_v2": {
        "router": _names((1, 2), "mlp.gate.weight"),
        "routed_experts": _names((1, 2), *EXPERTS),
        "shared_experts": _names((1, 2), "mlp.shared_experts.gate_proj.weight", "mlp.shared_experts.up_proj.weight",
                                 "mlp.shared_experts.down_proj.weight"),
        "dense_mlp": _names((0,), "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"),
        "attention": _names((0, 1, 2), "self_attn.q_proj.weight", "self_attn.kv_a_proj_with_mqa.weight",
                            "self_attn.kv_b_proj.weight", "self_attn.o_proj.weight"),
        "embedding": {"model.embed_tokens.weight"},
        "lm_head": {"lm_head.weight"},
    },
}


def expected_weights(model, *groups):
    table = GROUP_WEIGHTS[model.config.model_type]
    return set().union(*(table[g] for g in groups))


def test_moe_placement_perturbs_exactly_router_and_experts(model):
    before = snapshot(model)
    with program(model, Chip.from_options("pcm", placement="moe", seed=3, t_inference=3600)):
        touched = changed(model, before)
    assert touched == expected_weights(model, "router", "routed_experts", "shared_experts")


def test_experts_placement_leaves_the_router_digital(model):
    before = snapshot(model)
    with program(model, Chip.from_options("pcm", placement="experts", seed=3, t_inference=3600)):
        touched = changed(model, before)
    assert touched == expected_weights(model, "routed_experts", "shared_experts")
    assert not touched & expected_weights(model, "router")


@pytest.mark.parametrize("group", ["router", "routed_experts", "shared_experts", "dense_mlp", "attention",
                                   "embedding", "lm_head"])
def test_a_single_group_perturbs_exactly_its_weights(model, group):
    expected = expected_weights(model, group)
    chip = Chip.from_options("gaussian", placement=group, seed=4)
    if not expected:  # an explicit group this family does not have is an error, never a silent no-op
        with pytest.raises(UserError, match=f"{group} match no weight"):
            program(model, chip)
        return
    before = snapshot(model)
    with program(model, chip) as handle:
        touched = changed(model, before)
        assert set(handle.names) == expected
    assert touched == expected
    assert not changed(model, before)


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
    from romer.studies.sensitivity import doubling_point

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


def test_tile_mapping_through_program_scales_each_block_of_512_rows():
    """Additive Gaussian noise has σ = η·max|w| over the mapping group. The fused gate_up_proj [E, 600, H] of an
    olmoe with expert width 300 is two tiles per expert: rows 0–511 (max|w| = 1) and 512–599 (max|w| = 0.01).
    Under "tile" each block's noise follows its own maximum; under "expert" both follow the expert's."""
    model = tiny("olmoe", intermediate_size=300, num_hidden_layers=1)
    name = "model.layers.0.mlp.experts.gate_up_proj"
    param = model.get_parameter(name)
    with torch.no_grad():
        param.copy_(torch.rand(param.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1)
        param[:, :512] /= param[:, :512].abs().amax(dim=(-2, -1), keepdim=True)
        param[:, 512:] *= 0.01 / param[:, 512:].abs().amax(dim=(-2, -1), keepdim=True)
    clean = param.detach().clone()
    eta = 0.1
    spread = {}
    for mapping in ("tile", "expert"):
        with program(model, Chip.from_options("gaussian", eta=eta, placement="routed_experts", mapping=mapping,
                                              seed=5)):
            noise = model.get_parameter(name).detach() - clean
        spread[mapping] = (float(noise[:, :512].std()), float(noise[:, 512:].std()))
    n_small = clean[:, 512:].numel()  # 8 · 88 · 32 draws: the std is known to ±1/√(2n) ≈ 0.4 %
    assert n_small > 20_000
    assert spread["tile"][0] == pytest.approx(eta * 1.0, rel=0.03)
    assert spread["tile"][1] == pytest.approx(eta * 0.01, rel=0.03)
    assert spread["expert"][0] == pytest.approx(eta, rel=0.03) and spread["expert"][1] == pytest.approx(eta, rel=0.03)
    assert torch.equal(model.get_parameter(name), clean)
