"""Reports read only from the results store: aggregated tables (markdown / CSV / JSON), PNG plots, one HTML page."""

from romer.estimators import t_quantile
from romer.report.aggregate import aggregate, aggregate_rows
from romer.report.write import Report, build_report, resolve_store, write_report

__all__ = ["Report", "aggregate", "aggregate_rows", "build_report", "resolve_store", "t_quantile", "write_report"]
