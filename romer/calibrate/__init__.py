"""ROMER calibration: method configs → Calibrator.fit (on calibration tokens through the chip-programmed model)
→ Plan (JSON) → apply(model, chip, plan).

The package is callable: ``romer.calibrate(model, tokenizer, chip, method="recalibrate", **calibration)`` is
``romer.api.calibrate`` (it fits a Plan), so the name serves both the Python API and this package."""

import sys
import types

from romer.calibrate.apply import Applied, Cost, apply, plan_cost
from romer.calibrate.calibrator import Calibrator, Observation, observe
from romer.calibrate.config import MethodConfig, default_methods
from romer.calibrate.plan import Plan

__all__ = ["Applied", "Calibrator", "Cost", "MethodConfig", "Observation", "Plan", "apply", "default_methods",
           "observe", "plan_cost"]


class _CallablePackage(types.ModuleType):
    """This package's module type: calling it fits a plan (``romer.api.calibrate``)."""

    def __call__(self, *args, **kwargs):
        """``romer.api.calibrate(model, tokenizer, chip, method="recalibrate", **calibration)``: a Plan."""
        from romer.api import calibrate

        return calibrate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
