"""Routing diagnostics: hooks on MoE routers and the statistics they collect."""

from romer.routing.usage import ExpertUsage, record_usage

__all__ = ["ExpertUsage", "record_usage"]
