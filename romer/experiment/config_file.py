"""Reading experiment configs: a bundled name or a YAML file, ``--set key=value`` overrides, and one-line
messages for every mistake (a pydantic error is turned into the path of the bad key and what it expected)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from romer.errors import UserError
from romer.experiment.config import CONFIG_DIR, ExperimentConfig


def bundled_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config_path(path_or_name: str | Path) -> Path:
    """A bundled config name (``default``, ``ablations``) or a YAML file → its path (UserError if neither)."""
    text = str(path_or_name)
    if text in bundled_configs():
        return CONFIG_DIR / f"{text}.yaml"
    path = Path(text).expanduser()
    if not path.is_file():
        raise UserError(f"no config {text!r}: neither a bundled config ({', '.join(bundled_configs())}) nor a file")
    return path


def load_config(path_or_name: str | Path = "default", overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Read a YAML config (bundled name or file), apply ``key.sub=value`` overrides (values parsed as YAML, e.g.
    ``eval.max_tokens=null``, ``chip.t_inference=[1, 3600]``) and validate; UserError with one line otherwise."""
    path = resolve_config_path(path_or_name)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"config {path.name}:{where} is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        raise UserError(f"config {path.name} is empty: name the settings to change, or run a bundled config "
                        f"({', '.join(bundled_configs())})")
    if not isinstance(data, dict):
        raise UserError(f"config {path.name}: expected a mapping of settings at the top, got {type(data).__name__}")
    for item in overrides:
        apply_override(data, item)
    return validate_config(data, path.name)


def apply_override(data: dict, item: str) -> None:
    """Set ``key.sub=value`` in ``data`` in place (integer parts index lists); the value is parsed as YAML."""
    key, sep, text = item.partition("=")
    parts = [p for p in key.strip().split(".")]
    if not sep or not all(parts):
        raise UserError(f"--set takes KEY.SUB=VALUE, got {item!r}")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        raise UserError(f"--set {item!r}: the value is not valid YAML") from None
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise UserError(f"--set {item!r}: {'.'.join(parts[:i]) or 'top'} is a list of {len(node)}; "
                                f"{part!r} is not an index of it")
            part = int(part)
        elif not isinstance(node, dict):
            raise UserError(f"--set {item!r}: {'.'.join(parts[:i])} is not a mapping")
        if last:
            node[part] = value
        else:
            if isinstance(node, dict) and not isinstance(node.get(part), (dict, list)):
                node[part] = {}
            node = node[part]


def validate_config(data: dict, source: str = "config") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"config {source}: {describe_error(exc, data)}") from None
    except UserError as exc:
        raise UserError(f"config {source}: {exc}") from None


_BOUNDS = {"greater_than_equal": ("ge", "≥"), "greater_than": ("gt", ">"), "less_than_equal": ("le", "≤"),
           "less_than": ("lt", "<")}


def describe_error(exc: ValidationError, data: Any) -> str:
    """The first validation error as one readable line (``eval.window: must be ≥ 2 (got 1)``)."""
    errors = exc.errors(include_url=False)
    error = errors[0]
    loc = _data_path(error["loc"], data, keep_last=error["type"] in ("missing", "extra_forbidden"))
    where = _format_loc(loc)
    kind, ctx = error["type"], error.get("ctx") or {}
    got = _short(error.get("input"))
    if kind == "extra_forbidden":
        parent = _format_loc(loc[:-1])
        message = f"unknown key {loc[-1]!r}" + (f" in {parent}" if parent else "")
    elif kind == "missing":
        message = f"{where}: required"
    elif kind in _BOUNDS:
        bound, sign = _BOUNDS[kind]
        message = f"{where}: must be {sign} {ctx.get(bound)} (got {got})"
    else:
        text = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        text = text.replace("Input should be", "must be", 1)
        text = re.sub(r"a valid dictionary or instance of \w+", "a mapping of settings", text)
        if kind == "too_short":
            text = "must not be empty"
        if kind in ("too_short", "value_error"):
            message = f"{where}: {text}" if where else text
        else:
            message = f"{where}: {text} (got {got})" if where else f"{text} (got {got})"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return message


def _data_path(loc: tuple, data: Any, keep_last: bool) -> list:
    """The parts of a pydantic error location that exist in the input (drops union / validator tags)."""
    out, node = [], data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            out.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            out.append(part)
            node = node[part]
        elif keep_last and i == len(loc) - 1:
            out.append(part)
        else:
            node = None
    return out


def _format_loc(loc: list) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
