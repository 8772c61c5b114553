"""Devices, dtypes and memory of this machine: parsing the user's ``--device`` / ``--dtype`` and what is free.

Shared by models (loading), noise (programming) and the CLI, so none of them needs the others for it.
"""

from __future__ import annotations

import os
import re

import torch

from romer.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32"}
DEVICE_CHOICES = "cpu, cuda, cuda:N or auto"
PROGRAMMABLE_DEVICE_TYPES = ("cpu", "cuda")


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """``float32 | bfloat16 | float16`` (or fp32, bf16, fp16, a torch.dtype) → torch.dtype; UserError otherwise."""
    if isinstance(name, torch.dtype):
        if name in DTYPES.values():
            return name
        raise UserError(f"dtype {name} is not supported; choose one of {', '.join(DTYPES)}")
    key = DTYPE_ALIASES.get(str(name).strip().lower(), str(name).strip().lower())
    if key not in DTYPES:
        raise UserError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    return next((k for k, v in DTYPES.items() if v == dtype), str(dtype).removeprefix("torch."))


def parse_device(name: str | torch.device | None) -> torch.device:
    """``cpu | cuda | cuda:N | auto`` → torch.device (auto: the first CUDA device when there is one, else cpu).

    UserError for anything else, for CUDA without a visible GPU, and for a GPU index that does not exist."""
    text = "auto" if name is None else str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if not match:
        raise UserError(f"unknown device {name!r}; choose {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        raise UserError(f"device {text} asked for, but torch sees no CUDA GPU (torch {torch.__version__}); "
                        "use --device cpu")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise UserError(f"device {text} does not exist: {torch.cuda.device_count()} CUDA device(s) visible")
    return torch.device("cuda", index)


def check_programmable(device: torch.device, what: str = "weights") -> None:
    """Refuse weights that cannot be programmed in place: on the meta device (no data) or a device type other
    than cpu and cuda."""
    if device.type == "meta":
        raise UserError(f"{what} are on the meta device (shapes only, no values): load the model's weights "
                        "before programming it onto a chip")
    if device.type not in PROGRAMMABLE_DEVICE_TYPES:
        raise UserError(f"{what} are on device {device}; programming supports "
                        f"{' and '.join(PROGRAMMABLE_DEVICE_TYPES)} weights")


def available_ram_bytes() -> int:
    """Memory this process can still use: MemAvailable of /proc/meminfo (Linux), else free physical pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def total_ram_bytes() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def cuda_memory() -> list[tuple[str, int, int]]:
    """``(device, free bytes, total bytes)`` for each visible CUDA device (empty without CUDA)."""
    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        out.append((f"cuda:{i}", int(free), int(total)))
    return out


_LIBC = None


def release_free_memory() -> bool:
    """Hand memory that torch has freed but the C allocator still keeps back to the system (glibc
    ``malloc_trim``); False where that is not available. Buffers of up to 32 MiB (one expert matrix in float32,
    a layer's activations) come from glibc's heaps, which keep their freed holes: without a trim after each
    stage (programming, restore, a forward pass) resident memory creeps up stage by stage (0.9 GB over the
    real-size pipeline on 4 OLMoE-1B-7B layers; trimmed, each stage starts again from the model)."""
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    return bool(_LIBC) and bool(_LIBC.malloc_trim(0))
