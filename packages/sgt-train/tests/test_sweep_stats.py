"""The sweep's interval and paired-test arithmetic, checked against published t tables and a direct
computation (numerical integration of the t density, means and deviations by hand) on seeded
random samples."""

from __future__ import annotations

import math
import random

import pytest

from sgt_train.sweep_report import (
    mean_interval,
    paired_comparison,
    student_t_cdf,
    student_t_quantile,
    summarize,
)

#: two-sided 95% critical values t_{0.975, df} (any statistics textbook's table)
T975 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
    10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000, 120: 1.980,
}  # fmt: skip
#: one-sided 99.5% critical values t_{0.995, df}
T995 = {1: 63.657, 2: 9.925, 3: 5.841, 5: 4.032, 10: 3.169, 30: 2.750}


def _t_density(x: float, df: int) -> float:
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df))


def _cdf_by_integration(t: float, df: int, n: int = 20000) -> float:
    """P(T <= t) = 1/2 + integral_0^t density (Simpson's rule), for t >= 0."""
    h = t / n
    total = _t_density(0.0, df) + _t_density(t, df)
    for i in range(1, n):
        total += (4 if i % 2 else 2) * _t_density(i * h, df)
    return 0.5 + total * h / 3


@pytest.mark.parametrize(("df", "value"), sorted(T975.items()))
def test_quantile_matches_the_975_table(df: int, value: float) -> None:
    assert student_t_quantile(0.975, df) == pytest.approx(value, abs=6e-4)


@pytest.mark.parametrize(("df", "value"), sorted(T995.items()))
def test_quantile_matches_the_995_table(df: int, value: float) -> None:
    assert student_t_quantile(0.995, df) == pytest.approx(value, abs=6e-4)


def test_cdf_matches_integration_of_the_density_on_random_points() -> None:
    rng = random.Random(20261201)
    for _ in range(40):
        df, t = rng.randint(1, 40), rng.uniform(0.0, 6.0)
        direct = _cdf_by_integration(t, df)
        assert student_t_cdf(t, df) == pytest.approx(direct, abs=1e-9)
        assert student_t_cdf(-t, df) == pytest.approx(1.0 - direct, abs=1e-9)
        # the quantile inverts the CDF
        p = rng.uniform(0.51, 0.999)
        assert student_t_cdf(student_t_quantile(p, df), df) == pytest.approx(p, abs=1e-10)


def test_interval_is_mean_plus_minus_t_times_standard_error() -> None:
    rng = random.Random(7)
    for _ in range(200):
        n = rng.randint(2, 12)
        values = [rng.gauss(rng.uniform(-50, 50), rng.uniform(0.01, 20)) for _ in range(n)]
        mean = sum(values) / n
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
        half = student_t_quantile(0.975, n - 1) * sd / math.sqrt(n)
        got_mean, got_sd, low, high = mean_interval(values)
        assert got_mean == pytest.approx(mean, rel=1e-12, abs=1e-12)
        assert got_sd == pytest.approx(sd, rel=1e-10)
        assert low == pytest.approx(mean - half, rel=1e-10, abs=1e-10)
        assert high == pytest.approx(mean + half, rel=1e-10, abs=1e-10)
        if n - 1 in T975:  # against the table itself, independently of the quantile function
            assert high - mean == pytest.approx(T975[n - 1] * sd / math.sqrt(n), rel=2e-4)


def test_paired_test_is_a_one_sample_t_test_of_the_differences() -> None:
    rng = random.Random(11)
    for _ in range(200):
        n = rng.randint(2, 10)
        a = [rng.uniform(0, 100) for _ in range(n)]
        b = [x - rng.gauss(rng.uniform(-5, 5), rng.uniform(0.1, 5)) for x in a]
        d = [x - y for x, y in zip(a, b, strict=True)]
        mean = sum(d) / n
        sd = math.sqrt(sum((v - mean) ** 2 for v in d) / (n - 1))
        t = mean / (sd / math.sqrt(n))
        p = 2 * (1 - _cdf_by_integration(abs(t), n - 1, n=4000)) if abs(t) < 60 else 0.0
        got_mean, low, high, got_t, got_p = paired_comparison(a, b)
        assert got_mean == pytest.approx(mean, abs=1e-9)
        assert got_t == pytest.approx(t, rel=1e-9)
        assert got_p == pytest.approx(p, abs=1e-6)
        half = student_t_quantile(0.975, n - 1) * sd / math.sqrt(n)
        assert (low, high) == pytest.approx((mean - half, mean + half), abs=1e-9)
        # the 95% interval excludes 0 exactly when p < 0.05
        assert (low > 0 or high < 0) == (got_p < 0.05)


def test_degenerate_samples() -> None:
    assert mean_interval([3.0]) == (3.0, None, None, None)
    assert paired_comparison([1.0], [0.0]) == (1.0, None, None, None, None)
    mean, low, high, t, p = paired_comparison([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
    assert (mean, low, high, p) == (1.0, 1.0, 1.0, 0.0)
    assert t == math.inf
    assert paired_comparison([1.0, 2.0], [1.0, 2.0])[3:] == (0.0, 1.0)


def test_summarize_pairs_only_shared_seeds() -> None:
    runs = {
        "vqa": {0: {"m": 10.0}, 1: {"m": 12.0}, 2: {"m": 11.0}},
        "seg": {0: {"m": 13.0}, 1: {"m": 14.0}, 3: {"m": 99.0}},
    }
    report = summarize("s", "s.yaml", ["vqa", "seg"], {}, [0, 1, 2, 3], runs, [("seg", "vqa")])
    (cmp,) = report.comparisons
    assert (cmp.n, cmp.mean_diff) == (2, 2.5)
    assert report.summary("seg", "m") is not None
    assert report.summary("seg", "m").n == 3
    assert report.missing == ["vqa/3", "seg/2"]
