"""Routing diagnostics: hooks on MoE routers, the statistics they collect, and oracle routing.

Plots live in ``romer.routing.plots`` (imported on demand: it needs matplotlib).
"""

from romer.routing.oracle import (
    CapturedRouting,
    OracleResult,
    OracleRoutingError,
    capture_routing,
    oracle_perplexity,
    oracle_routing,
    routing_damage_share,
)
from romer.routing.recorder import PERCENTILES, LayerRouting, LogitSketch, RoutingRecord, record_routing
from romer.routing.stats import KL_EPSILON, LayerStats, RoutingStats, compare
from romer.routing.usage import ExpertUsage

__all__ = [
    "CapturedRouting",
    "ExpertUsage",
    "KL_EPSILON",
    "LayerRouting",
    "LayerStats",
    "LogitSketch",
    "OracleResult",
    "OracleRoutingError",
    "PERCENTILES",
    "RoutingRecord",
    "RoutingStats",
    "capture_routing",
    "compare",
    "oracle_perplexity",
    "oracle_routing",
    "record_routing",
    "routing_damage_share",
]
