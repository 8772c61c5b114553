"""Methods as registered classes: what each kind of method is made of and what it needs, declared once (torch-free:
the CLI, the configs and the API read it without loading the calibration machinery of ``romer.calibrate``).

A method kind is a class in :data:`REGISTRY` that declares

* ``parts``: the plan parts it fits, each an option section of ``MethodConfig`` filled with its defaults when the
  method does not set it (``replace``, ``recalibrate``, ``maxnn``, ``balance``, ``copies``), fitted by
  ``Calibrator.fit`` in :data:`PART_ORDER`; ``optional_parts`` are taken when given, never filled in;
* ``scores``: how a results row is scored — ``"clean"`` (the model before programming), ``"chip"`` (the model as
  programmed, no plan), ``"oracle"`` (the chip with the clean routing replayed) or ``"plan"`` (the chip with the
  method's fitted plan applied);
* ``observes``: whether fitting its plan runs calibration text through the model.

Everything else — MethodConfig's validation, the evaluator, the Python API and the CLI's list of kinds — reads
these declarations; nothing branches on a kind's name. Adding a kind made of existing parts is one class here.
"""

from __future__ import annotations

from typing import ClassVar

PART_ORDER = ("replace", "maxnn", "recalibrate", "balance", "copies")  # the order Calibrator.fit fits them in
SCORES = ("clean", "chip", "oracle", "plan")


class Method:
    """One kind of method (subclass and :func:`register` it)."""

    kind: ClassVar[str]
    parts: ClassVar[tuple[str, ...]] = ()
    optional_parts: ClassVar[tuple[str, ...]] = ()
    scores: ClassVar[str] = "plan"
    observes: ClassVar[bool] = True  # only meaningful when scores == "plan"
    summary: ClassVar[str] = ""

    @classmethod
    def makes_plan(cls) -> bool:
        return cls.scores == "plan"


REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Add a method kind to :data:`REGISTRY` (a class decorator); its parts must be known and its kind new."""
    if cls.kind in REGISTRY:
        raise ValueError(f"method kind {cls.kind!r} is registered twice")
    unknown = set(cls.parts + cls.optional_parts) - set(PART_ORDER)
    if unknown or cls.scores not in SCORES:
        raise ValueError(f"method kind {cls.kind!r}: unknown parts {sorted(unknown)} or scores {cls.scores!r}")
    REGISTRY[cls.kind] = cls
    return cls


def method_class(kind: str) -> type[Method]:
    """The registered class of ``kind`` (ValueError naming the known kinds otherwise)."""
    try:
        return REGISTRY[kind]
    except KeyError:
        raise ValueError(f"unknown method kind {kind!r}; choose one of {', '.join(REGISTRY)}") from None


def plan_kinds() -> tuple[str, ...]:
    """The kinds whose rows are scored with a fitted plan (what ``romer calibrate`` and ``romer.calibrate`` fit)."""
    return tuple(kind for kind, cls in REGISTRY.items() if cls.makes_plan())


@register
class Clean(Method):
    kind, scores, summary = "clean", "clean", "the model before programming: the reference"


@register
class Noisy(Method):
    kind, scores, summary = "noisy", "chip", "the model as programmed on the chip, nothing repaired"


@register
class Oracle(Method):
    kind, scores, summary = "oracle", "oracle", "the chip with the clean model's routing replayed (no plan)"


@register
class Replace(Method):
    kind, parts, summary = "replace", ("replace",), "expert replacement: cold slots get copies of hot experts"


@register
class Recalibrate(Method):
    kind, parts, summary = "recalibrate", ("recalibrate",), "percentile router-logit recalibration (P1 and kin)"
    optional_parts = ("copies",)  # P1 fitted on averaged router copies


@register
class Romer(Method):
    kind, parts, summary = "romer", ("replace", "recalibrate"), "ROMER: replacement, then recalibration on it"


@register
class MaxNN(Method):
    kind, parts, summary = "maxnn", ("maxnn",), "MaxNN: the largest-norm experts and attention digital"


@register
class Balance(Method):
    kind, parts, summary = "balance", ("balance",), "bias balancing: per-expert selection biases"


@register
class Copies(Method):
    kind, parts, observes = "copies", ("copies",), False
    summary = "K programmed copies of each analog router, averaged (no calibration text)"
