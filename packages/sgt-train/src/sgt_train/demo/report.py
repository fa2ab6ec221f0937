"""The demo's report folder: EvalReport JSON per model, a markdown summary with deltas, figures.

matplotlib is imported lazily (it comes with ``sgt-eval[plots]``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from sgt_eval.report import EvalReport

if TYPE_CHECKING:
    from sgt_train.config import RunConfig
    from sgt_train.demo.evaluation import SegmentationSet
    from sgt_train.demo.pipeline import DemoSize

__all__ = [
    "Difference",
    "SummaryRow",
    "binomial_half_width",
    "difference_exceeds",
    "notable_differences",
    "summary_rows",
    "write_report",
]

_MODELS = ("base", "control", "sgt")
_TITLES = {"base": "base", "control": "control (VQA only)", "sgt": "SGT (seg : VQA = 2 : 1)"}
#: Extra metrics shown besides each result's primary one (a POPE split: its accuracy).
_EXTRA = {
    ("scene-pope", "overall"): ("accuracy_mean", "yes_ratio_mean"),
    ("geneval", "scene"): ("correct_images",),
}
#: Metrics that are proportions of a result's items (a binomial band applies).
_PROPORTIONS = {"accuracy", "accuracy_mean", "correct_images", "yes_ratio", "yes_ratio_mean"}
#: Normal quantile of a two-sided 95% interval.
_Z95 = 1.959963984540054
_SHORT = {"base": "base", "control": "control", "sgt": "SGT"}
#: Rows that describe an answer bias, not a quality: banded, but not listed as notable.
_BIAS = {"yes_ratio", "yes_ratio_mean"}
#: Model pairs compared in the summary: (later, earlier).
_PAIRS = (("control", "base"), ("sgt", "base"), ("sgt", "control"))


def binomial_half_width(value: float, num_items: int) -> float:
    """Half-width in points of the 95% binomial interval of a proportion ``value`` (in %) of
    ``num_items`` items: Agresti-Coull, ``z * sqrt(p~ (1 - p~) / n~)`` with ``n~ = n + z^2`` and
    ``p~ = (x + z^2 / 2) / n~`` (``x = value / 100 * n``), so a score of 0 or 100 still has a band."""
    if num_items <= 0:
        raise ValueError(f"a proportion needs items, got {num_items}")
    n_tilde = num_items + _Z95**2
    p_tilde = (value / 100.0 * num_items + _Z95**2 / 2.0) / n_tilde
    return 100.0 * _Z95 * math.sqrt(p_tilde * (1.0 - p_tilde) / n_tilde)


def difference_exceeds(a: float, h_a: float, b: float, h_b: float) -> bool:
    """Whether ``a - b`` exceeds the band of a difference: ``|a - b| > sqrt(h_a^2 + h_b^2)``."""
    return abs(a - b) > math.hypot(h_a, h_b)


class SummaryRow:
    """One row of the summary table: a metric of a benchmark split for the three models, with
    each model's 95% half-width (None where the metric is not a proportion of items)."""

    def __init__(
        self,
        benchmark: str,
        split: str,
        metric: str,
        num_items: int,
        values: dict[str, float],
        half_widths: dict[str, float] | None = None,
        baseline: float | None = None,
    ) -> None:
        self.benchmark = benchmark
        self.split = split
        self.metric = metric
        self.num_items = num_items
        self.values = values
        self.half_widths = half_widths
        #: accuracy of always giving the commonest gold answer (50 on a balanced yes/no row)
        self.baseline = baseline

    @property
    def label(self) -> str:
        """``benchmark`` or ``benchmark (split)``."""
        return self.benchmark if self.split == "default" else f"{self.benchmark} ({self.split})"

    def difference_band(self, a: str, b: str) -> float | None:
        """Half-width of the band of ``values[a] - values[b]`` (None without bands)."""
        if self.half_widths is None:
            return None
        return math.hypot(self.half_widths[a], self.half_widths[b])


class Difference:
    """A difference between two models on one row that exceeds its band."""

    def __init__(self, row: SummaryRow, model: str, against: str) -> None:
        self.row = row
        self.model = model
        self.against = against
        self.delta = row.values[model] - row.values[against]
        band = row.difference_band(model, against)
        if band is None:
            raise ValueError(f"{row.label} {row.metric}: no noise band to compare against")
        self.band = band

    def __str__(self) -> str:
        return (
            f"{self.row.label} {self.row.metric}: {_SHORT[self.model]} − {_SHORT[self.against]}"
            f" = {self.delta:+.2f} (band ±{self.band:.1f})"
        )


def _half_widths(
    reports: Mapping[str, EvalReport], benchmark: str, split: str, metric: str
) -> dict[str, float] | None:
    """Per model the 95% half-width of a row: binomial for a proportion; for an aggregate (a mean
    of k component proportions) ``sqrt(sum h_i^2) / k``; None otherwise."""
    from sgt_train.demo.evaluation import AGGREGATES

    out: dict[str, float] = {}
    for model in _MODELS:
        result = reports[model].result(benchmark, split)
        if benchmark in AGGREGATES and metric == result.primary_metric:
            found = {(r.benchmark, r.split): r for r in reports[model].results}
            parts = [
                binomial_half_width(found[(b, s)].metrics[m], found[(b, s)].num_items)
                for b, s, m in AGGREGATES[benchmark]
                if (b, s) in found
            ]
            if not parts:
                return None
            out[model] = math.sqrt(sum(h * h for h in parts)) / len(parts)
        elif metric in _PROPORTIONS and result.num_items > 0:
            out[model] = binomial_half_width(result.metrics[metric], result.num_items)
        else:
            return None
    return out


def _baseline(report: EvalReport, benchmark: str, split: str, metric: str) -> float | None:
    result = report.result(benchmark, split)
    if "majority_baseline" in result.metrics and metric == result.primary_metric:
        return result.metrics["majority_baseline"]
    if benchmark == "scene-pope" and metric.startswith("accuracy"):
        return 50.0  # every split is balanced
    return None


def summary_rows(reports: Mapping[str, EvalReport]) -> list[SummaryRow]:
    """Rows for every benchmark split of the base report (primary metric, plus a few extras),
    the perception and reasoning aggregates first."""
    from sgt_train.demo.evaluation import AGGREGATES

    rows = []
    results = sorted(reports["base"].results, key=lambda r: r.benchmark not in AGGREGATES)
    for result in results:
        key = (result.benchmark, result.split)
        extra = _EXTRA.get(key, ("accuracy",) if result.benchmark == "scene-pope" else ())
        for metric in (result.primary_metric, *extra):
            if metric not in result.metrics:
                continue
            values = {m: reports[m].result(*key).metrics[metric] for m in _MODELS}
            rows.append(
                SummaryRow(
                    result.benchmark,
                    result.split,
                    metric,
                    result.num_items,
                    values,
                    _half_widths(reports, *key, metric),
                    _baseline(reports["base"], *key, metric),
                )
            )
    return rows


def notable_differences(rows: Sequence[SummaryRow]) -> list[Difference]:
    """Every model pair and row whose difference exceeds the band (:func:`difference_exceeds`);
    yes-ratio rows (an answer bias, not a score) are left out."""
    out = []
    for r in rows:
        if r.half_widths is None or r.metric in _BIAS:
            continue
        for model, against in _PAIRS:
            if difference_exceeds(
                r.values[model],
                r.half_widths[model],
                r.values[against],
                r.half_widths[against],
            ):
                out.append(Difference(r, model, against))
    return out


def _value(r: SummaryRow, model: str) -> str:
    v = f"{r.values[model]:.1f}"
    return v if r.half_widths is None else f"{v} ± {r.half_widths[model]:.1f}"


def _delta(r: SummaryRow, model: str, against: str) -> str:
    delta = r.values[model] - r.values[against]
    band = r.difference_band(model, against)
    if band is None:
        return f"{delta:+.1f}"
    text = f"{delta:+.1f} (±{band:.1f})"
    return f"**{text}**" if abs(delta) > band else text


def _table(rows: Sequence[SummaryRow]) -> list[str]:
    lines = [
        "| benchmark | metric | items | majority baseline | base | control | SGT "
        "| SGT − base | SGT − control | control − base |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        baseline = "–" if r.baseline is None else f"{r.baseline:.1f}"
        lines.append(
            f"| {r.label} | {r.metric} | {r.num_items} | {baseline} | {_value(r, 'base')} | "
            f"{_value(r, 'control')} | {_value(r, 'sgt')} | {_delta(r, 'sgt', 'base')} | "
            f"{_delta(r, 'sgt', 'control')} | {_delta(r, 'control', 'base')} |"
        )
    return lines


def _metrics_rows(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError(
            "the demo's figures need matplotlib: pip install 'sgt-eval[plots]'"
        ) from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_losses(runs: Mapping[str, Path], path: Path) -> Path:
    """Understanding CE of the control and SGT over their runs (both see the same VQA samples
    over a run, SGT over three times the steps), and SGT's segmentation flow MSE."""
    plt = _pyplot()
    rows = {name: _metrics_rows(d) for name, d in runs.items()}
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    ax = axes[0]
    # the two lines can coincide: a solid line for the control under a dashed one with markers
    # for SGT keeps both visible
    styles = {
        "control": {"linestyle": "-", "linewidth": 2.5},
        "sgt": {
            "linestyle": "--",
            "linewidth": 1.2,
            "marker": "o",
            "markersize": 3,
            "markevery": 0.1,
        },
    }
    for i, name in enumerate(("control", "sgt"), 1):
        points = [(r["step"], r["understanding/ce"]) for r in rows[name] if "understanding/ce" in r]
        if not points:
            continue
        last = max(step for step, _ in points)
        ax.plot(
            [step / last for step, _ in points],
            [ce for _, ce in points],
            color=f"C{i}",
            label=_TITLES[name],
            **styles[name],
        )
    ax.set(
        title="understanding (cross-entropy)",
        xlabel="share of the run (same VQA samples in both)",
        ylabel="loss",
    )
    ax.legend(fontsize=7)
    ax = axes[1]
    points = [(r["step"], r["segmentation/mse"]) for r in rows["sgt"] if "segmentation/mse" in r]
    if points:
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, color="C2")
    ax.set(title="segmentation (flow MSE), SGT", xlabel="SGT step", ylabel="loss")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_segmentation_grid(
    data: SegmentationSet,
    maps: Mapping[str, Sequence[NDArray[np.uint8]]],
    path: Path,
    rows: int = 6,
) -> Path:
    """Per held-out image: input | target map | each model's generated map."""
    plt = _pyplot()
    n = min(rows, len(data.images))
    columns = ["input", "target", *(_TITLES[m] for m in _MODELS)]
    fig, axes = plt.subplots(
        n, len(columns), figsize=(1.5 * len(columns), 1.5 * n + 0.3), squeeze=False
    )
    for i in range(n):
        target = data.renderer.render(np.asarray(data.labels[i]))
        panels = [data.images[i], target, *(maps[m][i] for m in _MODELS)]
        for j, panel in enumerate(panels):
            ax = axes[i][j]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(columns[j], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _describe(config: RunConfig) -> str:
    """``N steps of 32 samples, <source> : <source> = a : b within each micro-batch, lr ...``."""
    sources = config.data.sources
    ratios = " : ".join(f"{s.ratio:g}" for s in sources)
    names = " : ".join(s.name for s in sources)
    return (
        f"{config.steps} steps of {config.micro_batch_size} samples ({names} = {ratios}, "
        f"{config.data.mode.replace('_', ' ')}), lr {config.optimizer.lr:g}"
    )


def write_report(
    report_dir: Path,
    reports: Mapping[str, EvalReport],
    *,
    runs: Mapping[str, Path],
    segmentation: SegmentationSet,
    generated_maps: Mapping[str, Sequence[NDArray[np.uint8]]],
    size: DemoSize,
    seeds: Mapping[str, int],
    stage_seconds: Mapping[str, float],
    configs: Mapping[str, RunConfig],
    base: Mapping[str, Any],
) -> Path:
    """Write JSON reports, figures, ``comparison.md`` (sgt-eval) and ``summary.md``; its path."""
    from sgt_eval.compare import write_comparison

    report_dir.mkdir(parents=True, exist_ok=True)
    for name in _MODELS:
        reports[name].write(report_dir / f"{name}.json")
    loss_png = plot_losses(runs, report_dir / "loss_curves.png")
    grid_png = plot_segmentation_grid(
        segmentation, generated_maps, report_dir / "segmentation_grid.png"
    )
    written = write_comparison([reports[m] for m in _MODELS], report_dir)
    bars = sorted(p.name for p in written if p.name.startswith("bar_"))
    rows = summary_rows(reports)
    notable = [str(d) for d in notable_differences(rows)]
    lines = [
        "# SGT CPU demo: base vs VQA-only control vs SGT",
        "",
        f"Size `{size.name}`; seeds: "
        + ", ".join(f"{k} {v}" for k, v in seeds.items())
        + ". Tiny reference model (`ReferenceAdapterConfig(size='tiny')`), DeepSpeed ZeRO-2 on the CPU.",
        "",
        f"- base: the shipped base (`sgt_train.demo.base`, {base['what']}; rebuilt by "
        f"`{base['command']}`), not trained here; its vision encoder's held-out presence AUC "
        f"{base['encoder']['mean_presence_auc']}",
        f"- control: {_describe(configs['control'])} from the base (the `sgt-mini` sweep's "
        "`vqa-only` arm)",
        f"- SGT: {_describe(configs['sgt'])} from the base (the sweep's `segmentation` arm): the "
        "control's VQA samples in the same order, mixed within each micro-batch with "
        "segmentation at segmentation : VQA = 2 : 1",
        f"- held-out scenes: {size.num_eval} (train {size.num_train}; the base was trained on "
        f"{base['world']['num_train']} scenes of the same world seed 0, never on held-out ones); "
        f"sampling {size.inference_steps} Euler steps, 1 image per prompt; no model is trained "
        "on text-to-image, so GenEval rows measure nothing here",
        "",
        "## Results (held-out scenes)",
        "",
        *_table(rows),
        "",
        "Deltas are differences of the unrounded numbers in `base.json`, `control.json`, `sgt.json`. "
        "`x ± h`: the score and the half-width of its 95% binomial interval in points "
        "(Agresti-Coull, from the row's items); for `scene-perception` and `scene-reasoning`, the "
        "means of their benchmarks, `sqrt(sum h_i^2) / k` over the k components. A delta's band "
        "is `sqrt(h_a^2 + h_b^2)`; a difference **exceeds the noise band** (bold) when "
        "`|a − b| > sqrt(h_a^2 + h_b^2)`. Rows whose metric is not a proportion of items (F1, "
        "mIoU, PQ) have no band; yes-ratio rows measure an answer bias (50 = none), not a score, "
        "and are not listed among the differences. `majority baseline`: the score of always giving the commonest "
        "gold answer (50 on the balanced yes/no and two-choice rows). The bands cover item "
        "sampling only, not the variation between training seeds, which after minutes of CPU "
        "training is at least as large.",
        "",
        "## What these numbers show, and what they do not",
        "",
        "- This is a pipeline demonstration on a ~3M-parameter model trained for minutes on a CPU: "
        "differences between control and SGT are noise-level unless they clearly exceed the noise "
        "column, and even then a single seed is one draw. Re-run with `--seed` to see the spread.",
        "- The segmentation row is expected to favour SGT: only SGT trains on segmentation. It shows "
        "that the proxy task is learnt and scored end to end, not that understanding improved.",
        "- Scene VQA: perception (existence, counting, colour, position, depth order) and "
        "reasoning (sums, comparisons and differences of counts) are scored apart; every POPE "
        "split and every yes/no or two-choice row is balanced 50/50, so a model that answers by "
        "type priors (always `Yes`, always `A`) scores the majority baseline, and POPE's "
        "`yes_ratio_mean` shows such a bias (50 = unbiased).",
        "- GenEval here is the official rule set with a template-matching detector of the world's "
        "shapes and a low detection threshold (0.3): a model that draws coloured blobs whatever the "
        "prompt (SGT drawing segmentation-style maps) passes some `single_object` prompts by "
        "chance. Look at the drawn images in `../geneval/<model>/` before reading a GenEval delta.",
        "- The paper's gains (CV-Bench +6.0, POPE +2.6, GenEval +2.8 on BAGEL-7B) need the real "
        "model and data; nothing here reproduces or refutes them.",
        "",
        "Differences that exceed the noise band (|a − b| > sqrt(h_a^2 + h_b^2)): "
        + ("; ".join(notable) if notable else "none")
        + ".",
        "",
        "## Figures",
        "",
        f"![loss curves]({loss_png.name})",
        "",
        f"![segmentation grid]({grid_png.name})",
        "",
        "Bar charts per benchmark: " + ", ".join(f"[{b}]({b})" for b in bars) + ".",
        "",
        "## Time",
        "",
        "| stage | seconds |",
        "|---|---:|",
        *(f"| {k} | {v:.1f} |" for k, v in stage_seconds.items()),
        "",
        "## Files",
        "",
        "- `base.json`, `control.json`, `sgt.json`: `sgt_eval.EvalReport` per model",
        "- `comparison.md`: sgt-eval's comparison tables; `bar_*.png`, `radar_*.png`: its plots",
        "- `loss_curves.png`, `segmentation_grid.png`, `timings.json`",
        "",
        f"Demo size: `{json.dumps(asdict(size))}`",
        "",
    ]
    summary = report_dir / "summary.md"
    summary.write_text("\n".join(lines), encoding="utf-8")
    return summary
