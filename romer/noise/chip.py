"""A simulated chip (noise preset + placement + mapping + seed + inference time) and programming a model onto it.

Programming perturbs the analog weights **in place**, once, as the hardware would (static noise), and returns
a handle whose ``restore()`` writes the clean weights back bit-identically (from a temporary file by default,
so programming never needs a second copy of the model in memory). Each weight tensor draws from its
own generator, seeded from (chip seed, parameter name): different tensors get independent draws, and a tensor's
noise does not depend on which other tensors are analog or in which order they are programmed.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from romer.errors import UserError
from romer.noise.mapping import MAPPING_GROUPS
from romer.noise.placement import NAMED_PLACEMENTS, analog_weights, parse_placement
from romer.noise.presets import NoisePreset
from romer.noise.registry import get_preset, preset_from_dict

DEFAULT_PLACEMENT = "moe"
_PROGRAMMED_FLAG = "_romer_programmed_chip"


@dataclass(frozen=True)
class Chip:
    """One simulated analog chip.

    preset: the device noise model; placement: the analog module groups; mapping: the weight → conductance
    mapping group; seed: this chip's identity (its programming, drift and read-noise draws);
    t_inference: seconds between programming and inference.
    """

    preset: NoisePreset
    placement: frozenset[str] = field(default=NAMED_PLACEMENTS[DEFAULT_PLACEMENT])
    mapping: str = "expert"
    seed: int = 0
    t_inference: float = 86400.0

    def __post_init__(self):
        object.__setattr__(self, "placement", parse_placement(self.placement))
        if self.mapping not in MAPPING_GROUPS:
            raise UserError(f"unknown mapping group {self.mapping!r}; choose one of {', '.join(MAPPING_GROUPS)}")
        if self.t_inference < 0:
            raise UserError(f"inference time must be ≥ 0 s, got {self.t_inference}")

    @classmethod
    def from_options(cls, preset: str, placement: str = DEFAULT_PLACEMENT, mapping: str = "expert", seed: int = 0,
                     t_inference: float = 86400.0, **preset_overrides) -> "Chip":
        return cls(get_preset(preset, **preset_overrides), placement, mapping, seed, t_inference)

    def with_seed(self, seed: int) -> "Chip":
        return replace(self, seed=seed)

    def series(self, count: int) -> list["Chip"]:
        """``count`` chips identical but for their seeds: seed, seed + 1, …"""
        return [self.with_seed(self.seed + i) for i in range(count)]

    def placement_name(self) -> str:
        for name, groups in NAMED_PLACEMENTS.items():
            if groups == self.placement:
                return name
        return ",".join(sorted(self.placement))

    def to_dict(self) -> dict:
        return {"preset": self.preset.to_dict(), "placement": self.placement_name(), "mapping": self.mapping,
                "seed": self.seed, "t_inference": self.t_inference}

    @classmethod
    def from_dict(cls, payload: dict) -> "Chip":
        return cls(preset_from_dict(payload["preset"]), payload["placement"], payload["mapping"], payload["seed"],
                   payload["t_inference"])


# The main job's "real chip" (README, "Choosing the default chip"): IBM PCM at t = 1 day with drift compensation,
# MoE blocks analog, per-expert mapping, programming and read noise ×10. At the published scales the tiny zoo
# models lose < 1 % PPL (7B-class models are far more fragile); ×10 hurts visibly without destroying them.
DEFAULT_CHIP = {"preset": "pcm", "placement": "moe", "mapping": "expert", "t_inference": 86400.0,
                "prog_noise_scale": 10.0, "read_noise_scale": 10.0}


def default_chip(seed: int = 0) -> Chip:
    """The main job's default chip with the given seed."""
    return Chip.from_options(**DEFAULT_CHIP, seed=seed)


def tensor_generator(chip_seed: int, name: str) -> torch.Generator:
    """A CPU generator for one tensor of one chip, seeded from SHA-256 of (chip seed, parameter name)."""
    digest = hashlib.sha256(f"{chip_seed}/{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


class DiskStore:
    """Clean tensors in an anonymous temporary file (removed when closed): RAM holds no second copy.

    Writes go straight from the parameter's memory and ``restore_into`` reads straight back into it, so a CPU
    model's resident memory grows only by the one noisy tensor being written at a time.
    """

    def __init__(self):
        self._file = tempfile.TemporaryFile()
        self._index: dict[str, tuple[int, int]] = {}

    def put(self, name: str, tensor: torch.Tensor) -> None:
        data = _bytes_view(tensor.detach().to("cpu").contiguous())
        self._index[name] = (self._file.tell(), data.size)
        self._file.write(memoryview(data))

    def restore_into(self, name: str, param: torch.Tensor) -> None:
        offset, nbytes = self._index[name]
        self._file.seek(offset)
        target = param if param.device.type == "cpu" and param.is_contiguous() else torch.empty_like(param, device="cpu")
        if self._file.readinto(memoryview(_bytes_view(target.detach()))) != nbytes:
            raise OSError(f"clean copy of {name} is truncated")
        if target is not param:
            param.copy_(target)

    def close(self) -> None:
        self._file.close()


class MemoryStore:
    """Clean tensors as CPU copies in RAM (fastest restore; costs one copy of the analog weights)."""

    def __init__(self):
        self._tensors: dict[str, torch.Tensor] = {}

    def put(self, name: str, tensor: torch.Tensor) -> None:
        self._tensors[name] = tensor.detach().to("cpu", copy=True)

    def restore_into(self, name: str, param: torch.Tensor) -> None:
        param.copy_(self._tensors[name])

    def close(self) -> None:
        self._tensors.clear()


CLEAN_STORES = {"disk": DiskStore, "memory": MemoryStore}


def _bytes_view(tensor: torch.Tensor):
    """The tensor's memory as a flat uint8 numpy array (no copy; works for every dtype, bf16 included)."""
    return tensor.reshape(-1).view(torch.uint8).numpy()


class Programmed:
    """Handle of a programmed model: ``restore()`` puts the clean weights back (also usable as a context)."""

    def __init__(self, model: nn.Module, chip: Chip, store, params: dict[str, nn.Parameter]):
        self.model, self.chip = model, chip
        self._store, self._params = store, params

    @property
    def names(self) -> list[str]:
        """Names of the analog (perturbed) parameters."""
        return list(self._params)

    @torch.no_grad()
    def restore(self) -> None:
        if self._store is None:
            return
        for name, param in self._params.items():
            self._store.restore_into(name, param)
        self._store.close()
        self._store = None
        delattr(self.model, _PROGRAMMED_FLAG)

    def __enter__(self) -> "Programmed":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


@torch.no_grad()
def program(model: nn.Module, chip: Chip, clean_store: str = "disk") -> Programmed:
    """Perturb the chip's analog weights of ``model`` in place; return the handle that restores them.

    The clean analog weights are kept in ``clean_store``: ``"disk"`` (default; an anonymous temporary file, so
    neither RAM nor device memory holds a second copy of the model) or ``"memory"`` (CPU RAM copies). Noise is
    drawn on the CPU in float32 from per-tensor generators, so the same chip gives bit-identical weights on
    every machine with the same torch version.
    """
    if getattr(model, _PROGRAMMED_FLAG, None) is not None:
        raise UserError("model is already programmed onto a chip; restore() it before programming another")
    if clean_store not in CLEAN_STORES:
        raise UserError(f"unknown clean store {clean_store!r}; choose one of {', '.join(CLEAN_STORES)}")
    weights = analog_weights(model, chip.placement, strict=chip.placement_name() not in NAMED_PLACEMENTS)
    store = CLEAN_STORES[clean_store]()
    params: dict[str, nn.Parameter] = {}
    try:
        for w in weights:
            store.put(w.name, w.parameter)
            params[w.name] = w.parameter
            noisy = chip.preset.program(w.parameter.detach().to("cpu"), group=chip.mapping,
                                        t_inference=chip.t_inference, generator=tensor_generator(chip.seed, w.name))
            w.parameter.copy_(noisy)
            del noisy
    except BaseException:
        for name, param in params.items():
            store.restore_into(name, param)
        store.close()
        raise
    setattr(model, _PROGRAMMED_FLAG, chip)
    return Programmed(model, chip, store, params)
