"""The harness on every benchmark format with an adapter that answers by looking at the image."""

from pathlib import Path

import numpy as np
import pytest

from sgt_eval import EvalReport, EvalSettings
from sgt_eval.benchmarks.understanding import BENCHMARK_LOADERS
from sgt_eval.harness import build_report, evaluate_understanding, run_segmentation
from sgt_eval_shapeworld import EXPECTED, ShapeWorldAdapter, scene, write_benchmark_files


def test_all_formats_scored_as_worked_out(tmp_path: Path) -> None:
    specs = write_benchmark_files(tmp_path / "data")
    adapter = ShapeWorldAdapter()
    settings = EvalSettings(seed=7, batch_size=3, max_new_tokens=16)
    progress: list[tuple[str, int, int]] = []
    results = []
    for name, kwargs in specs.items():
        bench = BENCHMARK_LOADERS[name](expected_rows=None, **kwargs)
        scored, responses = evaluate_understanding(
            adapter, bench, settings, lambda *a: progress.append(a)
        )
        assert len(responses) == len(bench.items)
        assert bench.score(responses) == scored  # scores depend only on the responses
        results.extend(scored)
    # batches of at most batch_size, and progress reaching every total
    assert max(adapter.calls) == 3
    assert ("cv-bench", 6, 6) in progress
    assert ("cv-bench", 3, 6) in progress
    report = build_report("shape-world", adapter.kind, settings, results)
    for (bench_name, split), metrics in EXPECTED.items():
        got = report.result(bench_name, split).metrics
        for metric, value in metrics.items():
            assert got[metric] == pytest.approx(value), (bench_name, split, metric)
    report.write(tmp_path / "report.json")
    again = EvalReport.read(tmp_path / "report.json")
    assert again == report
    assert again.result("pope", "random").data_revision.startswith("sha256:")  # type: ignore[union-attr]
    assert "sgt-eval" in again.sgt_versions


def test_segmentation_proxy_through_inverse() -> None:
    class Segmenter:
        """Draws a map where every non-white pixel of the input becomes red."""

        def generate(self, instructions, images=None, settings=None):  # type: ignore[no-untyped-def]
            out = []
            for img in images:
                fg = (img < 200).any(-1)
                m = np.zeros_like(img)
                m[fg] = (255, 0, 0)
                # drawn at twice the size: the harness resizes with nearest neighbours
                out.append(np.kron(m, np.ones((2, 2, 1), np.uint8)))
            return out

    images = [scene([("square", "blue")]), scene([("circle", "red"), ("circle", "green")])]
    gts = [(img < 200).any(-1).astype(int) for img in images]
    gts[1][:, :48] = 0  # ground truth only has the right half: IoU drops on the first circle

    def inverse(rgb: np.ndarray) -> np.ndarray:
        return (rgb[..., 0] > 128).astype(int)

    r = run_segmentation(Segmenter(), images, gts, "Segment.", inverse, EvalSettings(batch_size=1))  # type: ignore[arg-type]
    fg_total = sum(int((img < 200).any(-1).sum()) for img in images)
    fg_gt = sum(int(g.sum()) for g in gts)
    pixels = sum(g.size for g in gts)
    bg_inter = pixels - fg_total
    bg_union = pixels - fg_gt
    expected = (fg_gt / fg_total + bg_inter / bg_union) / 2 * 100
    assert r.metrics["miou"] == pytest.approx(expected)
