"""A simulated chip (noise preset + placement + mapping + seed + inference time) and programming a model onto it.

Programming perturbs the analog weights **in place**, once, as the hardware would (static noise), and returns
a handle whose ``restore()`` writes the clean weights back bit-identically (from a temporary file unless the
analog weights are small, so programming never needs a second copy of the model in memory). It streams tensor
by tensor and, inside a fused [E, …] tensor, matrix by matrix: the peak is the model plus one matrix in float32.
Weights may be float32, bfloat16 or float16 on the CPU or a CUDA device; noise is computed in float32 on the
weights' device and cast back.

Each weight tensor draws from its own generator on the weights' device, seeded from (chip seed, parameter
name): different tensors get independent draws, and a tensor's noise does not depend on which other tensors
are analog or in which order they are programmed. Reproducibility: the same chip on the same device type with
the same torch version gives bit-identical weights; CPU and CUDA generators give different (statistically
equivalent) streams.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from romer.devices import available_ram_bytes, check_programmable, release_free_memory
from romer.errors import UserError
from romer.noise.draws import NormalStream
from romer.noise.io import IOConfig, get_io, io_from_dict
from romer.noise.io_hooks import IOHooks, install_io
from romer.noise.mapping import MAPPING_GROUPS
from romer.noise.placement import NAMED_PLACEMENTS, AnalogWeight, analog_weights, parse_placement
from romer.noise.presets import NoisePreset
from romer.noise.registry import get_preset, preset_from_dict

DEFAULT_PLACEMENT = "moe"
_PROGRAMMED_FLAG = "_romer_programmed_chip"


@dataclass(frozen=True)
class Chip:
    """One simulated analog chip.

    preset: the device noise model; placement: the analog module groups; mapping: the weight → conductance
    mapping group; seed: this chip's identity (its programming, drift and read-noise draws);
    t_inference: seconds between programming and inference; io: the DAC/ADC periphery of every analog matmul
    (``romer.noise.io``; ideal by default: exact inputs and outputs).
    """

    preset: NoisePreset
    placement: frozenset[str] = field(default=NAMED_PLACEMENTS[DEFAULT_PLACEMENT])
    mapping: str = "expert"
    seed: int = 0
    t_inference: float = 86400.0
    io: IOConfig = field(default_factory=IOConfig.ideal)

    def __post_init__(self):
        object.__setattr__(self, "placement", parse_placement(self.placement))
        object.__setattr__(self, "io", get_io(self.io))
        if self.mapping not in MAPPING_GROUPS:
            raise UserError(f"unknown mapping group {self.mapping!r}; choose one of {', '.join(MAPPING_GROUPS)}")
        if self.t_inference < 0:
            raise UserError(f"inference time must be ≥ 0 s, got {self.t_inference}")

    @classmethod
    def from_options(cls, preset: str, placement: str = DEFAULT_PLACEMENT, mapping: str = "expert", seed: int = 0,
                     t_inference: float = 86400.0, io: str | IOConfig | None = None,
                     **preset_overrides) -> "Chip":
        return cls(get_preset(preset, **preset_overrides), placement, mapping, seed, t_inference, get_io(io))

    def with_seed(self, seed: int) -> "Chip":
        return replace(self, seed=seed)

    def with_time(self, t_inference: float) -> "Chip":
        """The same chip (same devices and draws) read ``t_inference`` s after programming."""
        return replace(self, t_inference=float(t_inference))

    def with_io(self, io: "str | IOConfig") -> "Chip":
        """The same chip (same devices and draws) behind another periphery (an IO preset name or config)."""
        return replace(self, io=get_io(io))

    def series(self, count: int) -> list["Chip"]:
        """``count`` chips identical but for their seeds: seed, seed + 1, …"""
        return [self.with_seed(self.seed + i) for i in range(count)]

    def analog_weights(self, model: nn.Module) -> list[AnalogWeight]:
        """The model's weights this chip holds on analog arrays (``romer.noise.placement.analog_weights``; a custom
        group list must match something in every group it names, a named placement need not)."""
        return analog_weights(model, self.placement, strict=self.placement_name() not in NAMED_PLACEMENTS)

    def placement_name(self) -> str:
        for name, groups in NAMED_PLACEMENTS.items():
            if groups == self.placement:
                return name
        return ",".join(sorted(self.placement))

    def to_dict(self) -> dict:
        """JSON-serialisable; the ``io`` key only when the IO model is not ideal (older dicts stay valid)."""
        out = {"preset": self.preset.to_dict(), "placement": self.placement_name(), "mapping": self.mapping,
               "seed": self.seed, "t_inference": self.t_inference}
        return out if self.io.is_ideal else {**out, "io": self.io.to_dict()}

    @classmethod
    def from_dict(cls, payload: dict) -> "Chip":
        io = io_from_dict(payload["io"]) if payload.get("io") else IOConfig.ideal()
        return cls(preset_from_dict(payload["preset"]), payload["placement"], payload["mapping"], payload["seed"],
                   payload["t_inference"], io)


# The main job's "real chip" (README, "Choosing the default chip"): IBM PCM at t = 1 day with drift compensation,
# MoE blocks analog, per-expert mapping, programming and read noise ×10. At the published scales the tiny zoo
# models lose < 1 % PPL (7B-class models are far more fragile); ×10 hurts visibly without destroying them.
DEFAULT_CHIP = {"preset": "pcm", "placement": "moe", "mapping": "expert", "t_inference": 86400.0,
                "prog_noise_scale": 10.0, "read_noise_scale": 10.0}


def default_chip(seed: int = 0) -> Chip:
    """The main job's default chip with the given seed."""
    return Chip.from_options(**DEFAULT_CHIP, seed=seed)


def tensor_generator(chip_seed: int, name: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` for one tensor of one chip, seeded from SHA-256 of (chip seed, parameter name)."""
    digest = hashlib.sha256(f"{chip_seed}/{name}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _pieces(tensor: torch.Tensor) -> Iterator[torch.Tensor]:
    """The tensor as views of at most one matrix each (a fused [E, out, in] tensor: its E matrices)."""
    if tensor.ndim < 3:
        yield tensor
    else:
        yield from tensor.reshape(-1, *tensor.shape[-2:])


class DiskStore:
    """Clean tensors in an anonymous temporary file (removed when closed): RAM holds no second copy.

    Writes go straight from the parameter's memory and ``restore_into`` reads straight back into it, so a CPU
    model's resident memory grows only by the one noisy tensor being written at a time.
    """

    def __init__(self):
        self._file = tempfile.TemporaryFile()
        self._index: dict[str, tuple[int, int]] = {}

    def put(self, name: str, tensor: torch.Tensor) -> None:
        start = self._file.tell()
        for piece in _pieces(tensor.detach()):  # one matrix at a time: a GPU tensor never sits whole in RAM
            self._file.write(memoryview(_bytes_view(piece.to("cpu").contiguous())))
        self._index[name] = (start, self._file.tell() - start)

    def restore_into(self, name: str, param: torch.Tensor) -> None:
        offset, nbytes = self._index[name]
        self._file.seek(offset)
        param = param.detach()
        if param.device.type == "cpu" and param.is_contiguous():
            read = self._file.readinto(memoryview(_bytes_view(param)))
        else:
            read = 0
            for piece in _pieces(param):
                buffer = torch.empty(piece.shape, dtype=piece.dtype)
                read += self._file.readinto(memoryview(_bytes_view(buffer)))
                piece.copy_(buffer)
        if read != nbytes:
            raise OSError(f"clean copy of {name} is truncated")

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
AUTO_MEMORY_LIMIT = 1 << 30  # "auto": clean copies in RAM up to 1 GiB (and a quarter of the free RAM)


def store_for(nbytes: int, kind: str = "auto", limit: int = AUTO_MEMORY_LIMIT) -> DiskStore | MemoryStore:
    """A clean store for ``nbytes`` of tensors: ``kind`` "disk" or "memory", or "auto": memory when ``nbytes`` is
    at most ``limit`` and a quarter of the free RAM, else disk."""
    if kind == "auto":
        kind = "memory" if nbytes <= min(limit, available_ram_bytes() // 4) else "disk"
    return CLEAN_STORES[kind]()


def _store_for(kind: str, weights) -> DiskStore | MemoryStore:
    return store_for(sum(w.parameter.numel() * w.parameter.element_size() for w in weights), kind)


@contextmanager
def _one_arithmetic_thread(weights):
    """While CPU weights are programmed: torch's intra-op pool at one thread (restored after).

    The draws come from a second thread (``NormalStream`` prefetch), so on two cores one draws while the other
    computes; small elementwise ops spread over threads were measured ×10 slower on a busy 2-core machine.
    """
    if not any(w.parameter.device.type == "cpu" for w in weights) or torch.get_num_threads() == 1:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _bytes_view(tensor: torch.Tensor):
    """The tensor's memory as a flat uint8 numpy array (no copy; works for every dtype, bf16 included)."""
    return tensor.reshape(-1).view(torch.uint8).numpy()


class Programmed:
    """Handle of a programmed model: ``restore()`` puts the clean weights back (also usable as a context)."""

    def __init__(self, model: nn.Module, chip: Chip, store, params: dict[str, nn.Parameter],
                 io_hooks: IOHooks | None = None):
        self.model, self.chip = model, chip
        self._store, self._params = store, params
        self.io_hooks = io_hooks  # the chip's IO model on the analog matmuls (None: ideal IO, nothing installed)
        self.draws = 0  # normal draws programming took (all tensors)

    @property
    def names(self) -> list[str]:
        """Names of the analog (perturbed) parameters."""
        return list(self._params)

    @torch.no_grad()
    def clean(self, name: str) -> torch.Tensor:
        """A fresh CPU copy of analog parameter ``name``'s clean (intended) weights, read from the clean store:
        one tensor at a time, so comparing chip and clean weights never holds a second copy of the model."""
        if self._store is None:
            raise UserError("the model was restored: its clean weights are the model's own again")
        param = self._params[name]
        out = torch.empty(param.shape, dtype=param.dtype)
        self._store.restore_into(name, out)
        return out

    @torch.no_grad()
    def restore(self) -> None:
        if self._store is None:
            return
        if self.io_hooks is not None:
            self.io_hooks.remove()
            self.io_hooks = None
        for name, param in self._params.items():
            self._store.restore_into(name, param)
        self._store.close()
        self._store = None
        delattr(self.model, _PROGRAMMED_FLAG)
        release_free_memory()

    def __enter__(self) -> "Programmed":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


def _program_in_place(param: torch.Tensor, chip: Chip, key: str) -> int:
    """Program ``param`` in place on ``chip`` with the draws of generator ``key``; returns the draws taken."""
    generator = tensor_generator(chip.seed, key, param.device)
    with NormalStream(generator, bound=chip.preset.draw_bound(param)) as stream:
        chip.preset.program(param, group=chip.mapping, t_inference=chip.t_inference, generator=stream, out=param)
    return stream.drawn


def install_chip_io(model: nn.Module, chip: Chip, weights: list[AnalogWeight] | None = None) -> IOHooks | None:
    """Put the chip's IO model on the model's analog matmuls (``romer.noise.io_hooks``; ``weights``: the chip's
    analog weights, found when not given), output noise seeded from the chip seed; None for ideal IO (nothing
    installed). The caller removes the hooks (``IOHooks.remove``); ``program`` does so in ``restore()``."""
    if chip.io.is_ideal:
        return None
    weights = chip.analog_weights(model) if weights is None else weights
    return install_io(model, chip.io, weights, lambda key, device: tensor_generator(chip.seed, key, device))


@torch.no_grad()
def program_copy(clean: torch.Tensor, chip: Chip, name: str, copy: int) -> torch.Tensor:
    """Another array of ``chip`` holding parameter ``name``'s clean weights ``clean``, as a new tensor: copy
    ``copy`` ≥ 1 draws its own noise (generator seeded from chip seed, name and copy number), independent of the
    array ``program`` writes into the model (copy 0) and of every other copy."""
    if copy < 1:
        raise ValueError(f"copy numbers start at 1 (0 is the array in the model), got {copy}")
    out = clean.detach().clone()
    _program_in_place(out, chip, f"{name}#copy{copy}")
    return out


@torch.no_grad()
def program(model: nn.Module, chip: Chip, clean_store: str = "auto") -> Programmed:
    """Perturb the chip's analog weights of ``model`` in place; return the handle that restores them.

    The clean analog weights are kept in ``clean_store``: ``"disk"`` (an anonymous temporary file, so neither
    RAM nor device memory holds a second copy of the model), ``"memory"`` (CPU RAM copies) or ``"auto"``
    (default: memory when the analog weights take at most 1 GiB and a quarter of the free RAM, else disk).
    Noise is drawn in float32 on the weights' device from per-tensor generators (see the module docstring for
    what is reproducible) and each matrix is programmed in place. A chip whose IO model is not ideal also puts it
    on every analog matmul (``romer.noise.io_hooks``) until ``restore()``. Weights on the meta device or on a device
    other than cpu/cuda are refused (UserError).
    """
    if getattr(model, _PROGRAMMED_FLAG, None) is not None:
        raise UserError("model is already programmed onto a chip; restore() it before programming another")
    if clean_store not in (*CLEAN_STORES, "auto"):
        raise UserError(f"unknown clean store {clean_store!r}; choose one of auto, {', '.join(CLEAN_STORES)}")
    weights = chip.analog_weights(model)
    for w in weights:
        check_programmable(w.parameter.device, f"analog weights ({w.name})")
        if w.parameter.dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            raise UserError(f"analog weight {w.name} is {w.parameter.dtype}; programming needs floating-point "
                            "weights (float32, bfloat16 or float16)")
    store = _store_for(clean_store, weights)
    params: dict[str, nn.Parameter] = {}
    draws = 0
    try:
        with _one_arithmetic_thread(weights):
            for w in weights:
                param = w.parameter.detach()
                store.put(w.name, param)
                params[w.name] = w.parameter
                draws += _program_in_place(param, chip, w.name)
    except BaseException:
        for name, param in params.items():
            store.restore_into(name, param)
        store.close()
        raise
    hooks = install_chip_io(model, chip, weights)
    setattr(model, _PROGRAMMED_FLAG, chip)
    release_free_memory()  # the float32 working buffers of the last matrices
    handle = Programmed(model, chip, store, params, hooks)
    handle.draws = draws
    return handle
