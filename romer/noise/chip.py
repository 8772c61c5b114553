"""A simulated chip (noise preset + placement + mapping + seed + inference time) and programming a model onto it.

Programming perturbs the analog weights **in place**, once, as the hardware would (static noise), and returns
a handle whose ``restore()`` writes the clean weights back bit-identically. Each weight tensor draws from its
own generator, seeded from (chip seed, parameter name): different tensors get independent draws, and a tensor's
noise does not depend on which other tensors are analog or in which order they are programmed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from romer.errors import UserError
from romer.noise.mapping import MAPPING_GROUPS
from romer.noise.placement import NAMED_PLACEMENTS, analog_weights, parse_placement
from romer.noise.presets import NoisePreset, get_preset, preset_from_dict

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


def tensor_generator(chip_seed: int, name: str) -> torch.Generator:
    """A CPU generator for one tensor of one chip, seeded from SHA-256 of (chip seed, parameter name)."""
    digest = hashlib.sha256(f"{chip_seed}/{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


class Programmed:
    """Handle of a programmed model: ``restore()`` puts the clean weights back (also usable as a context)."""

    def __init__(self, model: nn.Module, chip: Chip, clean: dict[str, torch.Tensor], params: dict[str, nn.Parameter]):
        self.model, self.chip = model, chip
        self._clean, self._params = clean, params

    @property
    def names(self) -> list[str]:
        """Names of the analog (perturbed) parameters."""
        return list(self._params)

    @torch.no_grad()
    def restore(self) -> None:
        if self._clean is None:
            return
        for name, param in self._params.items():
            param.copy_(self._clean[name])
        self._clean = None
        delattr(self.model, _PROGRAMMED_FLAG)

    def __enter__(self) -> "Programmed":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


@torch.no_grad()
def program(model: nn.Module, chip: Chip) -> Programmed:
    """Perturb the chip's analog weights of ``model`` in place; return the handle that restores them.

    Clean copies of the analog weights are kept on the CPU (in their own dtype), so a GPU model never holds a
    second copy in device memory. Noise is drawn on the CPU in float32 from per-tensor generators, so the same
    chip gives bit-identical weights on every machine with the same torch version.
    """
    if getattr(model, _PROGRAMMED_FLAG, None) is not None:
        raise UserError("model is already programmed onto a chip; restore() it before programming another")
    weights = analog_weights(model, chip.placement, strict=chip.placement_name() not in NAMED_PLACEMENTS)
    clean, params = {}, {}
    try:
        for w in weights:
            clean[w.name] = w.parameter.detach().to("cpu", copy=True)
            params[w.name] = w.parameter
            noisy = chip.preset.program(clean[w.name], group=chip.mapping, t_inference=chip.t_inference,
                                        generator=tensor_generator(chip.seed, w.name))
            w.parameter.copy_(noisy)
    except BaseException:
        for name, param in params.items():
            param.copy_(clean[name])
        raise
    setattr(model, _PROGRAMMED_FLAG, chip)
    return Programmed(model, chip, clean, params)
