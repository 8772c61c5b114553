"""Safe local loading of causal LMs: zoo names or local HF folders, never the network.

Safetensors only unless ``allow_pickle=True`` (a ``pytorch_model.bin`` can run code when unpickled); remote
code (a config.json with ``auto_map``) only with ``trust_remote_code=True``. Every refusal is a one-line
``ModelNotFoundError`` / ``UnsafeModelError`` / ``UnsupportedModelError`` (all ``UserError``): a missing folder, a
folder without config.json, a config.json that is not JSON, corrupt or truncated safetensors, NaN/Inf weights
(named), a dense model, an unknown MoE layout, a meta or unknown device.
"""

from __future__ import annotations

import json
import logging
import re
from contextlib import contextmanager
from pathlib import Path

import torch

from romer.data.tokenizer import check_tokenizer_files
from romer.errors import UserError
from romer.models.families import UnsupportedModelError

ZOO_DIR = Path(__file__).resolve().parent / "zoo"
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


class ModelNotFoundError(UserError):
    """A model name or folder that cannot be loaded; the message is one line meant for users."""


class UnsafeModelError(ModelNotFoundError):
    """Loading would run untrusted code (pickled weights, remote modeling code) and the user did not opt in."""


def zoo_names() -> list[str]:
    """Names of the bundled reference models (folders holding a training recipe)."""
    return sorted(p.parent.name for p in ZOO_DIR.glob("*/train.yaml"))


def resolve_model_dir(name_or_path: str | Path, allow_pickle: bool = False) -> Path:
    """A zoo name or a local folder → the folder holding config.json and its weights (*.safetensors, or
    pickled weights when ``allow_pickle``)."""
    text = str(name_or_path)
    if text in zoo_names():
        folder = ZOO_DIR / text
        if not (folder / "model.safetensors").exists():
            raise ModelNotFoundError(f"zoo model {text!r} has no weights yet; train it: romer zoo train {text}")
        return folder
    folder = Path(text).expanduser()
    if not folder.is_dir():
        raise ModelNotFoundError(
            f"{text!r} is neither a zoo model ({', '.join(zoo_names())}) nor an existing folder"
        )
    if not (folder / "config.json").exists():
        raise ModelNotFoundError(f"{folder}: no config.json, not a Hugging Face model folder")
    if not any(folder.glob("*.safetensors")):
        pickled = [name for name in PICKLE_FILES if (folder / name).exists()]
        if not pickled:
            raise ModelNotFoundError(f"{folder}: no *.safetensors weights")
        if not allow_pickle:
            raise UnsafeModelError(f"{folder}: only pickled weights ({pickled[0]}); romer never loads pickled "
                                   "checkpoints unless asked: pass allow_pickle=True (--allow-pickle) if you trust "
                                   "the file")
    return folder


def read_config(folder: Path, trust_remote_code: bool = False) -> dict:
    """config.json as a dict; refuses a file that is not a JSON object, and remote code (``auto_map``) without
    ``trust_remote_code``."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:  # a folder named config.json, a file that cannot be read
        raise ModelNotFoundError(f"{path}: cannot be read ({error.strerror or type(error).__name__})") from None
    except UnicodeDecodeError as error:
        raise ModelNotFoundError(f"{path}: not UTF-8 text (byte {error.start}); re-save it as UTF-8") from None
    except json.JSONDecodeError as error:
        raise ModelNotFoundError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ModelNotFoundError(f"{path}: not a JSON object")
    if "auto_map" in config and not trust_remote_code:
        raise UnsafeModelError(f"{path} asks for remote modeling code (auto_map: "
                               f"{', '.join(sorted(config['auto_map']))}); romer runs it only when asked: pass "
                               "trust_remote_code=True (--trust-remote-code) if you trust the folder")
    return config


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """``"auto"`` → cuda if available, else cpu; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` as given. Refuses meta and
    devices this machine does not have."""
    text = str(device)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise UserError(f"unknown device {text!r}; use cpu, cuda, cuda:N or auto") from error
    if resolved.type == "meta":
        raise UserError("device 'meta' holds no weights; use cpu, cuda, cuda:N or auto")
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (resolved.index or 0) >= count:
            raise UserError(f"device {text!r} is not available here ({count} CUDA devices visible)")
    elif resolved.type != "cpu":
        raise UserError(f"unsupported device {text!r}; use cpu, cuda, cuda:N or auto")
    return resolved


def resolve_dtype(dtype: str | torch.dtype = torch.float32) -> torch.dtype:
    """A torch floating dtype or one of its names (float32, bfloat16, float16, fp32, bf16, fp16)."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.removeprefix("torch.")]
    raise UserError(f"unsupported dtype {dtype!r}; use float32, bfloat16 or float16")


def check_coverage(info: dict, folder) -> None:
    """Refuse weights that do not cover config.json exactly: a parameter config.json asks for that the files lack
    (it would start random — e.g. a config saying 8 layers over 4 layers' weights) or a tensor in the files that
    config.json does not use (it would be dropped — 2 layers over 4)."""
    missing, unexpected = list(info.get("missing_keys") or []), list(info.get("unexpected_keys") or [])
    if missing:
        raise ModelNotFoundError(f"{folder}: config.json asks for {len(missing)} tensor(s) the weights lack (first: "
                                 f"{sorted(missing)[0]}): a config of another size (layers, experts) than the "
                                 "checkpoint; they would start random")
    if unexpected:
        raise ModelNotFoundError(f"{folder}: the weights hold {len(unexpected)} tensor(s) config.json does not use "
                                 f"(first: {sorted(unexpected)[0]}): a config of another size (layers, experts) "
                                 "than the checkpoint; they would be dropped")


def load_model(name_or_path: str | Path, dtype: str | torch.dtype = torch.float32, device: str | torch.device = "cpu",
               *, allow_pickle: bool = False, trust_remote_code: bool = False, check_moe: bool = True,
               device_map: str | None = None):
    """Load a causal LM and its tokenizer from the zoo or a local folder, in eval mode: ``(model, tokenizer)``.

    No network. Safetensors only unless ``allow_pickle``; remote code only with ``trust_remote_code``; weights
    must be finite. ``check_moe`` (default) refuses a dense model or an MoE layout romer cannot read, before
    anything else runs. ``device_map="auto"`` (accelerate) spreads a model too large for one GPU over the visible
    GPUs and the CPU, layer by layer, instead of moving it to ``device``; programming then draws every tensor's
    noise on the device that tensor lives on. Fused experts run ``romer.models.sorted_experts`` (the same
    numbers as transformers' ``grouped_mm`` to float rounding, faster on the CPU).
    """
    from huggingface_hub.errors import StrictDataclassError
    from safetensors import SafetensorError

    from romer.models.sorted_experts import use_sorted_experts
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model_dir(name_or_path, allow_pickle=allow_pickle)
    read_config(folder, trust_remote_code=trust_remote_code)
    torch_dtype, torch_device = resolve_dtype(dtype), resolve_device(device)
    if device_map not in (None, "auto"):
        raise UserError(f"device_map must be auto (or none), got {device_map!r}")
    placement = {"device_map": device_map} if device_map else {}
    try:
        with _held_back_logs() as logs:  # transformers' multi-line load report must not precede our one line
            model, info = AutoModelForCausalLM.from_pretrained(
                folder, dtype=torch_dtype, use_safetensors=None if allow_pickle else True,
                trust_remote_code=trust_remote_code, local_files_only=True, output_loading_info=True, **placement)
    except (SafetensorError, OSError, EOFError) as error:
        raise ModelNotFoundError(f"{folder}: cannot read the weights ({_first_line(error)})") from error
    except StrictDataclassError as error:  # a config.json value of the wrong type (e.g. "num_experts": "eight")
        raise ModelNotFoundError(f"{folder}/config.json: {_first_line(error)}") from None
    except ValueError as error:
        if "remote code" in str(error) or "trust_remote_code" in str(error):
            raise UnsafeModelError(f"{folder}: {_first_line(error)}") from error
        raise ModelNotFoundError(f"{folder}: cannot load the model ({_first_line(error)})") from error
    except RuntimeError as error:
        if "mismatched" in str(error) or "size mismatch" in str(error):
            raise ModelNotFoundError(f"{folder}: the weights' shapes do not match config.json (a checkpoint of "
                                     f"another size, or an edited config){_mismatch(logs)}") from None
        raise
    check_coverage(info, folder)
    _emit(logs)  # a load that passed: transformers' other warnings are shown as usual
    model = (model if device_map else model.to(torch_device)).eval()
    check_finite(model, folder)
    use_sorted_experts(model)
    if check_moe:
        from romer.models.view import moe_layers

        moe_layers(model)
    check_tokenizer_files(folder)  # transformers would build an empty tokenizer for a folder without one
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
    except Exception as error:  # noqa: BLE001 — transformers and tokenizers raise many kinds for a broken file
        raise ModelNotFoundError(f"{folder}: cannot load the tokenizer ({_first_line(error)})") from None
    return model, tokenizer


@torch.no_grad()
def check_finite(model: torch.nn.Module, where: str | Path = "model") -> None:
    """Refuse a model with a NaN or infinite value in any parameter or persistent buffer, or a tensor left on the
    meta device (no weights), naming the tensor."""
    for name, tensor in model.state_dict().items():  # parameters and persistent buffers
        if tensor.is_meta:
            raise UserError(f"{where}: tensor {name} is on the meta device (it holds no weights); load it on cpu or cuda")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(f"{where}: tensor {name} holds NaN or infinite values; refusing to run it")


@contextmanager
def _held_back_logs():
    """Hold back every record transformers logs inside the block (yields the list they go to)."""
    library = logging.getLogger("transformers")

    class Hold(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    records: list[logging.LogRecord] = []
    handlers, propagate = library.handlers[:], library.propagate
    library.handlers, library.propagate = [Hold()], False
    try:
        yield records
    finally:
        library.handlers, library.propagate = handlers, propagate


def _emit(records: list[logging.LogRecord]) -> None:
    for record in records:
        logging.getLogger("transformers").handle(record)


def _mismatch(records: list[logging.LogRecord]) -> str:
    """"; e.g. TENSOR: checkpoint [..], config.json [..]" from transformers' load report, or ""."""
    for record in records:
        for line in record.getMessage().splitlines():
            found = re.match(r"\s*(.+?)\s*\|\s*MISMATCH.*ckpt: torch\.Size\(\[([\d, ]*)\]\) vs model:\s*"
                             r"torch\.Size\(\[([\d, ]*)\]\)", line)
            if found:
                name, held, wanted = found.groups()
                return f"; e.g. {name}: checkpoint [{held}], config.json [{wanted}]"
    return ""


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:200]


__all__ = ["DTYPES", "ModelNotFoundError", "UnsafeModelError", "UnsupportedModelError", "check_finite",
           "load_model", "read_config", "resolve_device", "resolve_dtype", "resolve_model_dir", "zoo_names"]
