"""ROMER calibration: method configs → Calibrator.fit (on calibration tokens through the chip-programmed model)
→ Plan (JSON) → apply(model, chip, plan)."""

from romer.calibrate.apply import Applied, Cost, apply, plan_cost
from romer.calibrate.calibrator import Calibrator, Observation, observe
from romer.calibrate.config import MethodConfig, default_methods
from romer.calibrate.plan import Plan

__all__ = ["Applied", "Calibrator", "Cost", "MethodConfig", "Observation", "Plan", "apply", "default_methods",
           "observe", "plan_cost"]
