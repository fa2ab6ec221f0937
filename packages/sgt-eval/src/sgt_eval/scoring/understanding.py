"""Official scoring of the understanding benchmarks, from parsed responses to ``BenchmarkResult``.

Every scorer takes the ground-truth fields and the raw model responses as parallel sequences and
applies the answer-parsing rule of the kit named in its ``protocol``. Metrics are percentages.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Protocol

from sgt_eval.parsing import (
    extract_choice_letter,
    extract_yes_no,
    leading_choice_letter,
    mathvista_extract,
    mathvista_normalize,
    pope_yes_no,
    sibench_hit,
)
from sgt_eval.report import BenchmarkResult

__all__ = [
    "AnswerExtractor",
    "ScoringError",
    "binary_metrics",
    "score_cv_bench",
    "score_hallusionbench",
    "score_mathvista",
    "score_mmstar",
    "score_mmvp",
    "score_pope",
    "score_realworldqa",
    "score_sibench",
    "score_vsr",
]


class ScoringError(ValueError):
    """Inputs to a scorer are inconsistent (lengths, pairs, unknown labels)."""


def _check_lengths(benchmark: str, **columns: Sequence[object]) -> int:
    sizes = {name: len(col) for name, col in columns.items()}
    if len(set(sizes.values())) > 1:
        raise ScoringError(f"{benchmark}: columns differ in length: {sizes}")
    n = next(iter(sizes.values()))
    if n == 0:
        raise ScoringError(f"{benchmark}: nothing to score")
    return n


def _pct(hits: Sequence[float]) -> float:
    return 100.0 * sum(hits) / len(hits) if hits else math.nan


#: Deliberate differences from lmms-eval 0.7.3's answer parsing (checked against its code; the
#: CV-Bench rule is the same as lmms-eval's, see ``parsing.leading_choice_letter``).
_LMMS_MCQ = (
    "letter parse: sgt-eval's extract_choice_letter, not lmms-eval 0.7.3's extract_mcq_answer, "
    "which reads only capitals (a bare 'b' is no answer, 'Answer is b' reads as A) and takes "
    "the last of several letters named, where sgt-eval reads the letter in either case and "
    "calls several letters no answer"
)
_LMMS_MMVP = (
    "A/B parse: sgt-eval's extract_choice_letter; lmms-eval 0.7.3's MMVP rule also reads any "
    "standalone 'a'/'b' anywhere ('there is a dog' reads as A, 'both' as B), sgt-eval does not"
)
_LMMS_POPE = (
    "yes/no parse: POPE's official first-sentence rule; lmms-eval 0.7.3 counts a response only "
    "when the whole of it, lower-cased and stripped, is 'yes' or 'no' ('Yes.' is neither)"
)


def _letter(answer: str) -> str:
    return answer.strip().strip("()").strip().upper()


def binary_metrics(truths: Sequence[bool], predictions: Sequence[bool]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (positive = yes) and the yes-ratio of the predictions."""
    tp = sum(t and p for t, p in zip(truths, predictions, strict=True))
    fp = sum((not t) and p for t, p in zip(truths, predictions, strict=True))
    fn = sum(t and not p for t, p in zip(truths, predictions, strict=True))
    tn = len(truths) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": 100.0 * (tp + tn) / len(truths),
        "precision": 100.0 * precision,
        "recall": 100.0 * recall,
        "f1": 100.0 * f1,
        "yes_ratio": 100.0 * (tp + fp) / len(truths),
    }


def score_cv_bench(
    answers: Sequence[str], sources: Sequence[str], responses: Sequence[str]
) -> BenchmarkResult:
    """CV-Bench, Cambrian's official formula: ``((acc_ADE20K + acc_COCO)/2 + acc_Omni3D)/2``.

    2D = mean of the ADE20K and COCO accuracies, 3D = Omni3D accuracy; the micro accuracy over
    all items (what lmms-eval's registered metric reports) is kept as ``micro_accuracy``.
    """
    n = _check_lengths("cv-bench", answers=answers, sources=sources, responses=responses)
    by_source: dict[str, list[float]] = defaultdict(list)
    hits: list[float] = []
    for answer, source, response in zip(answers, sources, responses, strict=True):
        hit = float(leading_choice_letter(response) == _letter(answer))
        by_source[source].append(hit)
        hits.append(hit)
    unknown = sorted(set(by_source) - {"ADE20K", "COCO", "Omni3D"})
    if unknown:
        raise ScoringError(f"cv-bench: unknown sources {unknown} (expected ADE20K, COCO, Omni3D)")
    metrics = {f"acc_{s}": _pct(h) for s, h in sorted(by_source.items())}
    metrics["micro_accuracy"] = _pct(hits)
    parts = []
    if "ADE20K" in by_source and "COCO" in by_source:
        metrics["2d"] = (metrics["acc_ADE20K"] + metrics["acc_COCO"]) / 2
        parts.append(metrics["2d"])
    if "Omni3D" in by_source:
        metrics["3d"] = metrics["acc_Omni3D"]
        parts.append(metrics["3d"])
    deviations: tuple[str, ...] = ()
    if len(parts) == 2:
        metrics["overall"] = sum(parts) / 2
    else:
        metrics["overall"] = metrics["micro_accuracy"]
        deviations = ("not every source present: overall is the micro accuracy",)
    return BenchmarkResult(
        benchmark="cv-bench",
        kind="understanding",
        metrics=metrics,
        primary_metric="overall",
        num_items=n,
        protocol="Cambrian CV-Bench: 2D = mean(ADE20K, COCO), 3D = Omni3D, overall = mean(2D, 3D); lmms-eval leading-letter parse",
        deviations=deviations,
    )


def score_mmvp(
    indices: Sequence[int], answers: Sequence[str], responses: Sequence[str]
) -> BenchmarkResult:
    """MMVP: rows with Index 2k-1 and 2k form a pair; pair accuracy (official) and per question."""
    n = _check_lengths("mmvp", indices=indices, answers=answers, responses=responses)
    hit_by_index: dict[int, bool] = {}
    for index, answer, response in zip(indices, answers, responses, strict=True):
        if index in hit_by_index:
            raise ScoringError(f"mmvp: Index {index} repeated")
        hit_by_index[index] = extract_choice_letter(response, "AB") == _letter(answer)
    pairs = sorted({(i + 1) // 2 for i in hit_by_index})
    for k in pairs:
        missing = [i for i in (2 * k - 1, 2 * k) if i not in hit_by_index]
        if missing:
            raise ScoringError(f"mmvp: pair {k} lacks Index {missing} (pairs are 2k-1, 2k)")
    pair_hits = [float(hit_by_index[2 * k - 1] and hit_by_index[2 * k]) for k in pairs]
    return BenchmarkResult(
        benchmark="mmvp",
        kind="understanding",
        metrics={
            "pair_accuracy": _pct(pair_hits),
            "question_accuracy": _pct([float(h) for h in hit_by_index.values()]),
        },
        primary_metric="pair_accuracy",
        num_items=n,
        protocol="MMVP: pair accuracy over (2k-1, 2k) pairs, both must be right; A/B letter parse",
        deviations=(_LMMS_MMVP,),
    )


def score_vsr(labels: Sequence[bool], responses: Sequence[str]) -> BenchmarkResult:
    """VSR zero-shot: yes/no (VLMEvalKit rule; Unknown counts as wrong) against the True/False label."""
    n = _check_lengths("vsr", labels=labels, responses=responses)
    parsed = [extract_yes_no(r) for r in responses]
    preds = [p == "yes" for p in parsed]
    metrics = binary_metrics(list(labels), preds)
    metrics["accuracy"] = _pct(
        [float(p is not None and (p == "yes") == t) for p, t in zip(parsed, labels, strict=True)]
    )
    metrics["unknown_ratio"] = _pct([float(p is None) for p in parsed])
    return BenchmarkResult(
        benchmark="vsr",
        split="zeroshot-test",
        kind="understanding",
        metrics=metrics,
        primary_metric="accuracy",
        num_items=n,
        protocol="VSR zero-shot test: VLMEvalKit yes/no extraction, Unknown counts as wrong",
    )


def score_sibench(
    settings: Sequence[str],
    qtypes: Sequence[str],
    answers: Sequence[str],
    responses: Sequence[str],
) -> BenchmarkResult:
    """SIBench: the strict per-type rules; per-setting accuracy, sample mean and setting mean."""
    n = _check_lengths(
        "sibench", settings=settings, qtypes=qtypes, answers=answers, responses=responses
    )
    by_setting: dict[str, list[float]] = defaultdict(list)
    hits: list[float] = []
    for setting, qtype, answer, response in zip(settings, qtypes, answers, responses, strict=True):
        hit = sibench_hit(response, answer, qtype)
        by_setting[setting].append(hit)
        hits.append(hit)
    metrics = {f"setting/{s}": _pct(h) for s, h in sorted(by_setting.items())}
    metrics["overall"] = _pct(hits)
    metrics["setting_mean"] = sum(_pct(h) for h in by_setting.values()) / len(by_setting)
    return BenchmarkResult(
        benchmark="sibench",
        kind="understanding",
        metrics=metrics,
        primary_metric="overall",
        num_items=n,
        protocol="SIBench strict rules (MCQ letter, YN first 3 chars, Number MRA, Number_Int exact)",
        deviations=(
            "responses the kit sends to its LLM extractor (qwen-72b) score 0",
            "paper-level aggregate (sample vs setting mean) unverified; both reported",
        ),
    )


def score_pope(
    splits: Sequence[str], answers: Sequence[str], responses: Sequence[str]
) -> list[BenchmarkResult]:
    """POPE, official rule: per split accuracy, precision, recall, F1 and yes-ratio of predictions.

    Also an ``overall`` result holding the mean over splits (LLaVA convention) and the pooled F1.
    """
    n = _check_lengths("pope", splits=splits, answers=answers, responses=responses)
    bad = sorted({a for a in answers if a.strip().lower() not in ("yes", "no")})
    if bad:
        raise ScoringError(f"pope: answers must be yes/no, got {bad[:5]}")
    truths = [a.strip().lower() == "yes" for a in answers]
    preds = [pope_yes_no(r) == "yes" for r in responses]
    protocol = (
        "official POPE: first-sentence yes/no parse, positive = yes, yes-ratio on predictions"
    )
    results: list[BenchmarkResult] = []
    per_split: dict[str, dict[str, float]] = {}
    for split in sorted(set(splits)):
        idx = [i for i, s in enumerate(splits) if s == split]
        metrics = binary_metrics([truths[i] for i in idx], [preds[i] for i in idx])
        per_split[split] = metrics
        results.append(
            BenchmarkResult(
                benchmark="pope",
                split=split,
                kind="understanding",
                metrics=metrics,
                primary_metric="f1",
                num_items=len(idx),
                protocol=protocol,
                deviations=(_LMMS_POPE,),
            )
        )
    pooled = binary_metrics(truths, preds)
    overall = {
        f"{k}_mean": sum(m[k] for m in per_split.values()) / len(per_split)
        for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")
    }
    overall.update({f"{k}_pooled": v for k, v in pooled.items()})
    results.append(
        BenchmarkResult(
            benchmark="pope",
            split="overall",
            kind="understanding",
            metrics=overall,
            primary_metric="f1_mean",
            num_items=n,
            protocol=protocol + "; overall = mean over splits (and pooled)",
            deviations=(_LMMS_POPE,),
        )
    )
    return results


def score_hallusionbench(
    categories: Sequence[str],
    subcategories: Sequence[str],
    set_ids: Sequence[str],
    figure_ids: Sequence[str],
    question_ids: Sequence[str],
    answers: Sequence[str],
    responses: Sequence[str],
) -> BenchmarkResult:
    """HallusionBench aAcc, fAcc, qAcc (and their mean) with VLMEvalKit's rule-based yes/no parse.

    fAcc groups questions by ``category_subcategory_set_figure``, qAcc by
    ``category_subcategory_set_question``; a group counts when all its questions are right.
    """
    n = _check_lengths(
        "hallusionbench",
        categories=categories,
        subcategories=subcategories,
        set_ids=set_ids,
        figure_ids=figure_ids,
        question_ids=question_ids,
        answers=answers,
        responses=responses,
    )
    figures: dict[str, list[bool]] = defaultdict(list)
    questions: dict[str, list[bool]] = defaultdict(list)
    hits: list[float] = []
    for cat, sub, sid, fid, qid, answer, response in zip(
        categories,
        subcategories,
        set_ids,
        figure_ids,
        question_ids,
        answers,
        responses,
        strict=True,
    ):
        truth = {"1": "yes", "0": "no", "yes": "yes", "no": "no"}.get(answer.strip().lower())
        if truth is None:
            raise ScoringError(f"hallusionbench: gt answer {answer!r} is not 0/1/yes/no")
        hit = extract_yes_no(response) == truth
        hits.append(float(hit))
        figures[f"{cat}_{sub}_{sid}_{fid}"].append(hit)
        questions[f"{cat}_{sub}_{sid}_{qid}"].append(hit)
    a = _pct(hits)
    f = _pct([float(all(v)) for v in figures.values()])
    q = _pct([float(all(v)) for v in questions.values()])
    return BenchmarkResult(
        benchmark="hallusionbench",
        kind="understanding",
        metrics={"aAcc": a, "fAcc": f, "qAcc": q, "mean": (a + f + q) / 3},
        primary_metric="aAcc",
        num_items=n,
        protocol="HallusionBench aAcc/fAcc/qAcc, VLMEvalKit grouping and yes/no extraction",
        deviations=("rule-based yes/no instead of the GPT-4 judge; Unknown counts as wrong",),
    )


def score_mmstar(
    answers: Sequence[str], categories: Sequence[str], responses: Sequence[str]
) -> BenchmarkResult:
    """MMStar: accuracy overall and per category (A–D letter extraction)."""
    n = _check_lengths("mmstar", answers=answers, categories=categories, responses=responses)
    by_cat: dict[str, list[float]] = defaultdict(list)
    hits: list[float] = []
    for answer, cat, response in zip(answers, categories, responses, strict=True):
        hit = float(extract_choice_letter(response, "ABCD") == _letter(answer))
        by_cat[cat].append(hit)
        hits.append(hit)
    metrics = {f"category/{c}": _pct(h) for c, h in sorted(by_cat.items())}
    metrics["accuracy"] = _pct(hits)
    return BenchmarkResult(
        benchmark="mmstar",
        kind="understanding",
        metrics=metrics,
        primary_metric="accuracy",
        num_items=n,
        protocol="MMStar accuracy, multiple-choice letter extraction",
        deviations=(_LMMS_MCQ,),
    )


def score_realworldqa(answers: Sequence[str], responses: Sequence[str]) -> BenchmarkResult:
    """RealWorldQA: letter extraction when the answer is A–D, else lower-case exact match."""
    n = _check_lengths("realworldqa", answers=answers, responses=responses)
    hits: list[float] = []
    for answer, response in zip(answers, responses, strict=True):
        gt = answer.strip()
        if len(gt) == 1 and gt.upper() in "ABCD":
            hits.append(float(extract_choice_letter(response, "ABCD") == gt.upper()))
        else:
            pred = response.strip().lower().removesuffix(".").strip()
            hits.append(float(pred == gt.lower().removesuffix(".").strip()))
    return BenchmarkResult(
        benchmark="realworldqa",
        kind="understanding",
        metrics={"accuracy": _pct(hits)},
        primary_metric="accuracy",
        num_items=n,
        protocol="RealWorldQA accuracy (lmms-eval rule: letter for A–D answers, else exact match)",
        deviations=(_LMMS_MCQ,),
    )


class AnswerExtractor(Protocol):
    """A local judge that extracts a short answer from a free-form MathVista response."""

    name: str

    def extract(self, response: str, query: str) -> str: ...


def score_mathvista(
    rows: Sequence[Mapping[str, object]],
    responses: Sequence[str],
    extractor: AnswerExtractor | None = None,
) -> BenchmarkResult:
    """MathVista testmini accuracy with rule-only extraction (optionally a local LLM extractor).

    ``rows`` carry ``answer``, ``question_type``, ``answer_type``, ``choices``, ``precision`` and
    ``query``. The extractor, when given, is asked only where the rules found no number or choice.
    """
    n = _check_lengths("mathvista", rows=rows, responses=responses)
    hits: list[float] = []
    asked = 0
    for row, response in zip(rows, responses, strict=True):
        choices = row.get("choices")
        choice_list = [str(c) for c in choices] if isinstance(choices, list | tuple) else None
        qtype = str(row["question_type"])
        atype = str(row["answer_type"])
        prec = row.get("precision")
        precision = int(prec) if isinstance(prec, int | float) and not math.isnan(prec) else None
        extraction = mathvista_extract(response, choice_list, qtype)
        if extraction is None and extractor is not None:
            extraction = extractor.extract(response, str(row.get("query", "")))
            asked += 1
        elif extraction is None:
            extraction = response.strip()
        normalized = mathvista_normalize(extraction, choice_list, qtype, atype, precision)
        hits.append(float(normalized is not None and normalized == str(row["answer"]).strip()))
    deviations = (
        ("LLM extraction by local judge where rules failed",)
        if extractor
        else ("rule-only answer extraction instead of the official GPT extraction",)
    )
    return BenchmarkResult(
        benchmark="mathvista",
        split="testmini",
        kind="understanding",
        metrics={"accuracy": _pct(hits), "judge_calls": float(asked)},
        primary_metric="accuracy",
        num_items=n,
        protocol="MathVista testmini accuracy, official normalisation (choice by edit distance, int, rounded float)",
        deviations=deviations,
        judge=extractor.name if extractor else None,
    )
