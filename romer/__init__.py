"""romer: MoE language models on simulated analog compute-in-memory hardware, and their training-free repair.

The Python API (``romer.api``; ``examples/`` has runnable scripts). Names load on first use: ``import romer``
itself imports neither torch nor transformers.

>>> import romer
>>> sorted(romer.presets())                                  # noise presets; romer.Chip.from_options(name, ...)
['gaussian', 'gaussian-mult', 'hermes', 'pcm', 'reram']
>>> chip = romer.default_chip(seed=2)                        # the main job's chip: PCM ×10 at 1 day, MoE analog
>>> chip  # doctest: +ELLIPSIS
Chip(preset=PCMPreset(...), placement=frozenset({...}), mapping='expert', seed=2, t_inference=86400.0, io=IOConfig(name='ideal', ...))

The steps of a study, each one call: ``romer.load`` → ``romer.program`` (a chip's read-back weights, restored
on exit) → ``romer.evaluate`` (an ``EvalSpec``) → ``romer.calibrate`` (a ``Plan``) → ``romer.apply`` /
``romer.save_calibrated``; ``romer.routing_stats`` and ``romer.record_routing`` look at the routers. See
``romer.api`` for a worked example.
"""

import importlib as _importlib
import importlib.util as _importlib_util

__version__ = "0.1.0"

# public name → the module that defines it (imported on first access)
_HOMES = {
    "load": "romer.api",
    "presets": "romer.api",
    "default_chip": "romer.api",
    "program": "romer.api",
    "evaluate": "romer.api",
    "Evaluation": "romer.api",
    "routing_stats": "romer.api",
    "apply": "romer.api",
    "save_calibrated": "romer.api",
    "serve": "romer.api",
    "MonitorConfig": "romer.calibrate.monitor",
    "Chip": "romer.noise.chip",
    "Programmed": "romer.noise.chip",
    "EvalSpec": "romer.eval.spec",
    "MethodConfig": "romer.calibrate.config",
    "Plan": "romer.calibrate.plan",
    "Applied": "romer.calibrate.apply",
    "record_routing": "romer.routing.recorder",
    "RoutingStats": "romer.routing.stats",
}
# ``romer.calibrate`` is the calibration package, callable as romer.api.calibrate (see romer/calibrate/__init__.py)
__all__ = sorted([*_HOMES, "calibrate", "__version__"])


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is not None:
        value = getattr(_importlib.import_module(home), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    submodule = f"{__name__}.{name}"  # a subpackage or module: romer.calibrate, romer.estimators, …
    if name.isidentifier() and not name.startswith("_") and _importlib_util.find_spec(submodule) is not None:
        return _importlib.import_module(submodule)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({name for name in globals() if not name.startswith("_")} | set(__all__))
