"""sgt-eval: benchmarks with their official scoring, offline, plus comparison reports and plots."""

from importlib.metadata import version as _version

from sgt_eval.report import EVAL_REPORT_SCHEMA_VERSION, BenchmarkResult, EvalReport, EvalSettings

__version__ = _version("sgt-eval")

__all__ = [
    "EVAL_REPORT_SCHEMA_VERSION",
    "BenchmarkResult",
    "EvalReport",
    "EvalSettings",
    "__version__",
]
