"""Statistics, tables and plots of a sweep: per arm and metric the mean over seeds with a Student-t
95% confidence interval, and paired comparisons between arms that share seeds.

The t distribution is computed here (regularised incomplete beta function by Lentz's continued
fraction, quantiles by bisection on it) so that sgt-train needs no scipy.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "PAPER_COLUMNS",
    "SWEEP_REPORT_SCHEMA_VERSION",
    "ArmMetricSummary",
    "PairedComparison",
    "SweepReport",
    "markdown_report",
    "mean_interval",
    "paired_comparison",
    "plot_sweep",
    "student_t_cdf",
    "student_t_quantile",
    "table_columns",
]

SWEEP_REPORT_SCHEMA_VERSION: Literal[1] = 1
_CONFIDENCE = 0.95

#: The columns of the paper's ablation table, as metric keys of the demo's EvalReports: the
#: perception and reasoning aggregates (``sgt_train.demo.evaluation``), GenEval's position
#: accuracy and the segmentation proxy's mIoU. A table without columns of its own shows them first
#: (those the runs measured), then every other headline metric.
PAPER_COLUMNS: tuple[dict[str, str], ...] = (
    {"label": "perception", "metric": "scene-perception/default/score"},
    {"label": "reasoning", "metric": "scene-reasoning/default/score"},
    {"label": "GenEval position", "metric": "geneval/scene/position"},
    {"label": "seg mIoU", "metric": "sgt-proxy-segmentation/semantic/miou"},
)
#: A column naming ``perception`` or ``reasoning`` that no sweep aggregate defines reads the
#: EvalReport's aggregate.
_ALIASES = {
    "perception": "scene-perception/default/score",
    "reasoning": "scene-reasoning/default/score",
}


# -- the t distribution -----------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 3e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def student_t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on the CDF)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must lie in (0, 1), got {p}")
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while student_t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if student_t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


# -- summaries --------------------------------------------------------------------------------


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArmMetricSummary(_Frozen):
    """One arm's metric over its seeds: mean and 95% Student-t interval (none with one seed)."""

    arm: str
    metric: str
    n: int = Field(ge=1)
    mean: float
    sd: float | None
    ci_low: float | None
    ci_high: float | None
    values: dict[str, float] = Field(description="seed -> value")


class PairedComparison(_Frozen):
    """``arm`` minus ``against`` on the seeds both ran: mean difference, 95% CI, paired t-test."""

    arm: str
    against: str
    metric: str
    n: int = Field(ge=1)
    mean_diff: float
    ci_low: float | None
    ci_high: float | None
    t: float | None
    p_value: float | None = Field(description="two-sided paired t-test; none below 2 pairs")


def mean_interval(
    values: Sequence[float],
) -> tuple[float, float | None, float | None, float | None]:
    """Mean, sample standard deviation and the 95% Student-t interval of ``values``."""
    if not values:
        raise ValueError("no values")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None, None, None
    sd = statistics.stdev(values)
    half = student_t_quantile(0.5 + _CONFIDENCE / 2, len(values) - 1) * sd / math.sqrt(len(values))
    return mean, sd, mean - half, mean + half


def paired_comparison(
    a: Sequence[float], b: Sequence[float]
) -> tuple[float, float | None, float | None, float | None, float | None]:
    """For pairs ``a[i], b[i]``: mean of ``a - b``, its 95% CI, the t statistic and p-value."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} values paired with {len(b)}")
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    mean, sd, low, high = mean_interval(diffs)
    if sd is None:
        return mean, None, None, None, None
    n = len(diffs)
    if sd == 0.0:
        if mean == 0.0:
            return mean, low, high, 0.0, 1.0
        return mean, low, high, math.copysign(math.inf, mean), 0.0
    t = mean / (sd / math.sqrt(n))
    p = 2.0 * (1.0 - student_t_cdf(abs(t), n - 1))
    return mean, low, high, t, min(1.0, max(0.0, p))


class SweepReport(_Frozen):
    """Every run's metrics of a sweep and their statistics; written as ``report.json``."""

    schema_version: Literal[1] = SWEEP_REPORT_SCHEMA_VERSION
    sweep: str
    sweep_file: str
    arms: list[str]
    labels: dict[str, str]
    seeds: list[int]
    metrics: list[str] = Field(description="'benchmark/split/metric' keys, in table order")
    headline: list[str] = Field(
        default_factory=list, description="default table columns: primary metrics, aggregates"
    )
    #: arm -> seed -> metric -> value
    runs: dict[str, dict[str, dict[str, float]]]
    summaries: list[ArmMetricSummary]
    comparisons: list[PairedComparison]
    missing: list[str] = Field(default_factory=list, description="'arm/seed' without a report")
    tables: list[dict[str, Any]] = Field(default_factory=list)
    notes: list[str] = Field(
        default_factory=list, description="paragraphs the report states first (e.g. the base)"
    )

    def summary(self, arm: str, metric: str) -> ArmMetricSummary | None:
        """The summary of one arm and metric, if any seed of the arm measured it."""
        for s in self.summaries:
            if s.arm == arm and s.metric == metric:
                return s
        return None


def summarize(
    name: str,
    sweep_file: str,
    arms: Sequence[str],
    labels: Mapping[str, str],
    seeds: Sequence[int],
    runs: Mapping[str, Mapping[int, Mapping[str, float]]],
    comparisons: Sequence[tuple[str, str]],
    tables: Sequence[Mapping[str, Any]] = (),
    headline: Sequence[str] = (),
    notes: Sequence[str] = (),
) -> SweepReport:
    """Means, intervals and paired comparisons of ``runs`` (arm -> seed -> metric -> value)."""
    metrics: list[str] = []
    for arm in arms:
        for values in runs.get(arm, {}).values():
            metrics += [m for m in values if m not in metrics]
    summaries = []
    for arm in arms:
        for metric in metrics:
            by_seed = {s: v[metric] for s, v in runs.get(arm, {}).items() if metric in v}
            if not by_seed:
                continue
            mean, sd, low, high = mean_interval(list(by_seed.values()))
            summaries.append(
                ArmMetricSummary(
                    arm=arm, metric=metric, n=len(by_seed), mean=mean, sd=sd, ci_low=low,
                    ci_high=high, values={str(s): v for s, v in sorted(by_seed.items())},
                )
            )  # fmt: skip
    paired = []
    for arm, against in comparisons:
        for metric in metrics:
            mine, theirs = runs.get(arm, {}), runs.get(against, {})
            shared = sorted(
                s for s in mine if s in theirs and metric in mine[s] and metric in theirs[s]
            )
            if not shared:
                continue
            mean, low, high, t, p = paired_comparison(
                [mine[s][metric] for s in shared], [theirs[s][metric] for s in shared]
            )
            paired.append(
                PairedComparison(
                    arm=arm, against=against, metric=metric, n=len(shared), mean_diff=mean,
                    ci_low=low, ci_high=high, t=t if t is None or math.isfinite(t) else None,
                    p_value=p,
                )
            )  # fmt: skip
    missing = [f"{a}/{s}" for a in arms for s in seeds if s not in runs.get(a, {})]
    return SweepReport(
        sweep=name,
        sweep_file=sweep_file,
        arms=list(arms),
        labels=dict(labels),
        seeds=list(seeds),
        metrics=metrics,
        headline=[m for m in headline if m in metrics],
        runs={a: {str(s): dict(v) for s, v in sorted(runs.get(a, {}).items())} for a in arms},
        summaries=summaries,
        comparisons=paired,
        missing=missing,
        tables=[dict(t) for t in tables],
        notes=list(notes),
    )


# -- Markdown ---------------------------------------------------------------------------------


def table_columns(report: SweepReport, table: Mapping[str, Any]) -> list[dict[str, str]]:
    """A table's columns: its own, else :data:`PAPER_COLUMNS` (those measured), then the headline
    (or every metric); a column's metric is resolved through the aggregate aliases."""
    columns: list[dict[str, str]] = [dict(c) for c in table.get("columns") or []]
    if not columns:
        columns = [dict(c) for c in PAPER_COLUMNS if c["metric"] in report.metrics]
        taken = {c["metric"] for c in columns}
        columns += [
            {"label": m, "metric": m} for m in report.headline or report.metrics if m not in taken
        ]
    for c in columns:
        alias = _ALIASES.get(c["metric"])
        if c["metric"] not in report.metrics and alias in report.metrics:
            c["metric"] = alias
    return columns


def _cell(s: ArmMetricSummary | None) -> str:
    if s is None:
        return "–"
    if s.ci_low is None or s.ci_high is None:
        return f"{s.mean:.1f} (n={s.n})"
    return f"{s.mean:.1f} ± {s.mean - s.ci_low:.1f}"


def _diff(c: PairedComparison | None) -> str:
    if c is None:
        return ""
    if c.ci_low is None or c.p_value is None:
        return f" ({c.mean_diff:+.1f})"
    return f" ({c.mean_diff:+.1f}, p={c.p_value:.2g})"


def plot_name(table: int, metric: str) -> str:
    """The file name of a table column's plot: ``table<N>-<metric, '/' as '_'>.png``."""
    return f"table{table}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', metric)}.png"


def markdown_report(report: SweepReport, plots: Sequence[str] = ()) -> str:
    """The sweep's tables as Markdown: per table, rows = arms (their labels), columns = metrics;
    a cell is ``mean ± CI half-width`` and, for an arm compared with another, the mean paired
    difference and its p-value. ``plots``: the plot files written (relative to the report), linked
    under their table."""
    pairs = {(c.arm, c.metric): c for c in report.comparisons}
    against = {c.arm: c.against for c in report.comparisons}
    lines = [f"# Sweep {report.sweep}", ""]
    lines.append(
        f"Seeds: {', '.join(map(str, report.seeds))}. Cells: mean over seeds ± the half-width of "
        "the 95% Student-t interval; in brackets the mean paired difference to the arm named in "
        "'vs' and the two-sided paired t-test p-value."
    )
    for note in report.notes:
        lines += ["", note]
    if report.missing:
        lines += ["", f"**Incomplete:** no report for {', '.join(report.missing)}."]
    tables = report.tables or [{"title": "All arms", "arms": report.arms, "columns": []}]
    for n, table in enumerate(tables):
        columns = table_columns(report, table)
        lines += ["", f"## {table['title']}", ""]
        lines.append("| arm | vs | " + " | ".join(c["label"] for c in columns) + " |")
        lines.append("| --- | --- |" + " --- |" * len(columns))
        for arm in table["arms"]:
            cells = [
                _cell(report.summary(arm, c["metric"])) + _diff(pairs.get((arm, c["metric"])))
                for c in columns
            ]
            vs = report.labels.get(against[arm], against[arm]) if arm in against else ""
            lines.append(f"| {report.labels.get(arm, arm)} | {vs} | " + " | ".join(cells) + " |")
        links = [
            f"[{c['label']}]({path})"
            for c in columns
            for path in plots
            if Path(path).name == plot_name(n, c["metric"])
        ]
        if links:
            lines += ["", "Plots (mean ± 95% CI): " + ", ".join(links) + "."]
    return "\n".join(lines) + "\n"


# -- plots ------------------------------------------------------------------------------------


def plot_sweep(report: SweepReport, folder: Path) -> list[Path]:
    """One PNG per table and column: means with 95% CI error bars (bars, or a line over the
    table's ``x`` values); nothing without matplotlib (``sgt-eval[plots]``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    tables = report.tables or [{"title": "all", "arms": report.arms, "columns": []}]
    for n, table in enumerate(tables):
        columns = table_columns(report, table)
        xs: dict[str, float] = dict(table.get("x") or {})
        for col in columns:
            rows = [(a, report.summary(a, col["metric"])) for a in table["arms"]]
            present = [(a, s) for a, s in rows if s is not None]
            if not present:
                continue
            means = [s.mean for _, s in present]
            errs = [(s.mean - s.ci_low) if s.ci_low is not None else 0.0 for _, s in present]
            fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(present) + 2), 3.2))
            if xs and all(a in xs for a, _ in present):
                ax.errorbar([xs[a] for a, _ in present], means, yerr=errs, marker="o", capsize=4)
                ax.set_xscale("log")
                ax.set_xlabel(str(table.get("x_label", "x")))
            else:
                labels = [report.labels.get(a, a) for a, _ in present]
                ax.bar(range(len(present)), means, yerr=errs, capsize=4, color="#4C72B0")
                ax.set_xticks(range(len(present)), labels, rotation=20, ha="right")
            ax.set_ylabel(col["label"], fontsize=8)
            ax.set_title(
                f"{table['title']}: {col['label']}\n(mean ± 95% CI, n={len(report.seeds)} seeds)",
                fontsize=9,
            )
            fig.tight_layout()
            path = folder / plot_name(n, col["metric"])
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written
