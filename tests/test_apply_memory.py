"""Applying a plan keeps no RAM copy of what it overwrites once that is large: the replica slots' and digital
weights' originals go to a temp file, and restore still gives the clean model back bit-identically."""

import importlib
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from romer.calibrate import apply
from romer.calibrate.apply import Saved
from romer.calibrate.plan import Plan, Replacement
from romer.devices import release_free_memory
from romer.models.view import moe_layers
from romer.noise.chip import Chip, DiskStore, MemoryStore
from tests.tiny_models import VOCAB, tiny

apply_module = importlib.import_module("romer.calibrate.apply")  # the package exports the function under this name
CHIP = Chip.from_options("gaussian", eta=0.3, placement="all", seed=5)


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensors that torch ops create (new storage only, views not counted) while they are alive."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0

    def _gone(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                nbytes = t.untyped_storage().nbytes()
                self.live += nbytes
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._gone, nbytes)
        return out


def plan_for(model) -> Plan:
    layers = moe_layers(model)
    plan = Plan.none(CHIP)
    plan.replacement = [Replacement(layer.index, "replica", [(0, 1), (2, 3)]) for layer in layers]
    plan.digital_experts = {layer.index: [4] for layer in layers}
    plan.digital_attention = True
    return plan


@pytest.mark.parametrize("family", ["olmoe", "gpt_oss"])  # fused; gpt_oss: interleaved (non-contiguous) views, biases
@pytest.mark.parametrize("limit", [0, 1 << 30])
def test_apply_with_saved_copies_on_disk_or_in_ram_restores_bit_identically(family, limit, monkeypatch):
    monkeypatch.setattr(apply_module, "UNDO_MEMORY_LIMIT", limit)
    model = tiny(family)
    ids = torch.randint(1, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad(), apply(model, CHIP, plan_for(model)) as applied:
        assert isinstance(applied._undo._store, DiskStore if limit == 0 else MemoryStore)
        noisy = model(input_ids=ids).logits
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    monkeypatch.setattr(apply_module, "UNDO_MEMORY_LIMIT", 1 << 30 if limit == 0 else 0)
    with torch.no_grad(), apply(model, CHIP, plan_for(model)):  # the other store: the same chip, the same logits
        assert torch.equal(model(input_ids=ids).logits, noisy)


def test_saving_slots_to_disk_allocates_at_most_one_matrix(monkeypatch):
    monkeypatch.setattr(apply_module, "UNDO_MEMORY_LIMIT", 0)
    fused = torch.randn(8, 64, 128, generator=torch.Generator().manual_seed(1))  # 8 experts of 32 KiB each
    views = [fused[e] for e in range(4)] + [fused[5, ::2]]  # contiguous slots and an interleaved, strided view
    original = fused.clone()
    with LiveBytes() as counter:
        saved = Saved(views)
    assert counter.peak <= fused[0].nbytes // 2  # a RAM copy would hold 4.5 slots (144 KiB)
    with torch.no_grad():
        fused.zero_()
    saved.restore()
    assert torch.equal(fused[:4], original[:4]) and torch.equal(fused[5, ::2], original[5, ::2])
    assert not fused[4].any()


def test_release_free_memory_is_safe_to_call():
    assert release_free_memory() in (True, False)
    assert isinstance(release_free_memory(), bool)
