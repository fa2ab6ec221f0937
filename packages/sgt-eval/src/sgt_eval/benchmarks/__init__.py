"""Benchmark loaders from local copies in their published layouts (row-count and revision checked).

``from sgt_eval.benchmarks import load_cv_bench`` and the other ``load_*`` functions; a
malformed copy raises :class:`BenchmarkDataError` naming the file and row.
"""

from sgt_eval.benchmarks.generation import (
    GEditItem,
    load_gedit,
    load_geneval_prompts,
    read_geneval_outputs,
    write_geneval_outputs,
)
from sgt_eval.benchmarks.tables import BenchmarkDataError
from sgt_eval.benchmarks.understanding import (
    BENCHMARK_LOADERS,
    OFFICIAL_ROWS,
    VQABenchmark,
    VQAItem,
    load_cv_bench,
    load_hallusionbench,
    load_mathvista,
    load_mmstar,
    load_mmvp,
    load_pope,
    load_realworldqa,
    load_sibench,
    load_vsr,
)

__all__ = [
    "BENCHMARK_LOADERS",
    "OFFICIAL_ROWS",
    "BenchmarkDataError",
    "GEditItem",
    "VQABenchmark",
    "VQAItem",
    "load_cv_bench",
    "load_gedit",
    "load_geneval_prompts",
    "load_hallusionbench",
    "load_mathvista",
    "load_mmstar",
    "load_mmvp",
    "load_pope",
    "load_realworldqa",
    "load_sibench",
    "load_vsr",
    "read_geneval_outputs",
    "write_geneval_outputs",
]
