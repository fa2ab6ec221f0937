"""Official scoring of the understanding benchmarks on hand-built cases worked out here."""

import pytest

from sgt_eval.scoring.understanding import (
    ScoringError,
    score_cv_bench,
    score_hallusionbench,
    score_mathvista,
    score_mmstar,
    score_mmvp,
    score_pope,
    score_realworldqa,
    score_sibench,
    score_vsr,
)


def test_cv_bench_official_formula_differs_from_micro_accuracy() -> None:
    # ADE20K 1/2 right, COCO 4/4 right, Omni3D 0/2 right
    sources = ["ADE20K"] * 2 + ["COCO"] * 4 + ["Omni3D"] * 2
    answers = ["(A)", "(B)", "(A)", "(B)", "(C)", "(D)", "(A)", "(B)"]
    responses = ["A", "A", "(A)", "B.", "C", "D", "B", "A"]
    r = score_cv_bench(answers, sources, responses)
    assert r.metrics["acc_ADE20K"] == 50.0
    assert r.metrics["acc_COCO"] == 100.0
    assert r.metrics["2d"] == 75.0  # mean over sources, not 5/6
    assert r.metrics["3d"] == 0.0
    assert r.metrics["overall"] == 37.5  # (75 + 0) / 2
    assert r.metrics["micro_accuracy"] == 62.5  # 5/8: what lmms-eval registers
    with pytest.raises(ScoringError, match="unknown sources"):
        score_cv_bench(["(A)"], ["Cityscapes"], ["A"])


def test_mmvp_pairs_half_right() -> None:
    # pair 1 both right, pairs 2 and 3 one right each, pair 4 none
    indices = [1, 2, 3, 4, 5, 6, 7, 8]
    answers = ["(a)", "(b)", "(a)", "(b)", "(a)", "(b)", "(a)", "(b)"]
    responses = ["A", "B", "A", "A", "B", "B", "B", "A"]
    r = score_mmvp(indices, answers, responses)
    assert r.metrics["pair_accuracy"] == 25.0
    assert r.metrics["question_accuracy"] == 50.0
    assert r.primary_metric == "pair_accuracy"
    with pytest.raises(ScoringError, match=r"pair 2 lacks Index \[4\]"):
        score_mmvp([1, 2, 3], ["A", "B", "A"], ["A", "B", "A"])
    with pytest.raises(ScoringError, match="Index 1 repeated"):
        score_mmvp([1, 1], ["A", "B"], ["A", "B"])


def test_pope_yes_ratio_is_on_predictions() -> None:
    splits = ["random"] * 4 + ["adversarial"] * 4
    answers = ["yes", "yes", "no", "no", "yes", "no", "no", "no"]
    responses = [
        "Yes.",
        "No, there is not.",
        "Yes",
        "No",  # random: TP1 FN1 FP1 TN1
        "yes",
        "yes",
        "yes",
        "no",  # adversarial: TP1 FP2 TN1
    ]
    results = {r.split: r for r in score_pope(splits, answers, responses)}
    rnd, adv, overall = results["random"], results["adversarial"], results["overall"]
    assert rnd.metrics == {
        "accuracy": 50.0,
        "precision": 50.0,
        "recall": 50.0,
        "f1": 50.0,
        "yes_ratio": 50.0,
    }
    assert adv.metrics["precision"] == pytest.approx(100 / 3)
    assert adv.metrics["recall"] == 100.0
    assert adv.metrics["f1"] == pytest.approx(50.0)  # 2·(1/3)·1 / (4/3)
    assert adv.metrics["yes_ratio"] == 75.0  # 3 of 4 predicted yes; the GT ratio would be 25
    assert overall.metrics["f1_mean"] == pytest.approx(50.0)
    assert overall.metrics["yes_ratio_pooled"] == 62.5  # 5 of 8 predictions
    # pooled: TP2 FP3 FN1 -> P 0.4, R 2/3, F1 0.5
    assert overall.metrics["f1_pooled"] == pytest.approx(50.0)
    with pytest.raises(ScoringError, match="yes/no"):
        score_pope(["random"], ["maybe"], ["yes"])


def test_hallusionbench_figure_and_question_groups() -> None:
    # one set, two figures, the same two questions asked of each figure
    cat, sub, sid = ["VD"] * 4, ["chart"] * 4, ["0"] * 4
    fig, qid = ["0", "0", "1", "1"], ["0", "1", "0", "1"]
    answers = ["1", "0", "1", "1"]
    responses = ["Yes", "No.", "No", "yes, it is"]  # only figure 1 question 0 is wrong
    r = score_hallusionbench(cat, sub, sid, fig, qid, answers, responses)
    assert r.metrics["aAcc"] == 75.0
    assert r.metrics["fAcc"] == 50.0  # figure 0 all right, figure 1 not
    assert r.metrics["qAcc"] == 50.0  # question 1 right on both figures, question 0 not
    assert r.metrics["mean"] == pytest.approx(175 / 3)


def test_vsr_unknown_counts_as_wrong() -> None:
    r = score_vsr([True, True, False, False], ["Yes", "no", "No.", "maybe"])
    assert r.metrics["accuracy"] == 50.0
    assert r.metrics["unknown_ratio"] == 25.0


def test_sibench_sample_and_setting_means() -> None:
    r = score_sibench(
        ["Counting", "Counting", "Height"],
        ["MCQ", "MCQ", "Number"],
        ["A", "A", "10"],
        ["A", "Apple", "12"],
    )
    assert r.metrics["setting/Counting"] == 50.0
    assert r.metrics["setting/Height"] == pytest.approx(60.0)
    assert r.metrics["overall"] == pytest.approx(160 / 3)
    assert r.metrics["setting_mean"] == pytest.approx(55.0)


def test_mmstar_and_realworldqa() -> None:
    r = score_mmstar(["A", "B", "C", "D"], ["x", "x", "y", "y"], ["A", "(B)", "D", "answer is D"])
    assert r.metrics == {"category/x": 100.0, "category/y": 50.0, "accuracy": 75.0}
    rw = score_realworldqa(["A", "3", "left"], ["A.", "3.", "Right"])
    assert rw.metrics["accuracy"] == pytest.approx(200 / 3)


def test_mathvista_rule_only_is_labelled_a_deviation() -> None:
    rows = [
        {
            "answer": "two",
            "question_type": "multi_choice",
            "answer_type": "text",
            "choices": ["one", "two"],
            "precision": None,
            "query": "q",
        },
        {
            "answer": "12",
            "question_type": "free_form",
            "answer_type": "integer",
            "choices": None,
            "precision": None,
            "query": "q",
        },
        {
            "answer": "1.5",
            "question_type": "free_form",
            "answer_type": "float",
            "choices": None,
            "precision": 1.0,
            "query": "q",
        },
    ]
    r = score_mathvista(rows, ["B", "x is 12.0", "about one and a half"])
    assert r.metrics["accuracy"] == pytest.approx(200 / 3)
    assert any("rule-only" in d for d in r.deviations)

    class Judge:
        name = "local-qwen"

        def extract(self, response: str, query: str) -> str:
            return "1.5" if "half" in response else response

    judged = score_mathvista(rows, ["B", "x is 12.0", "about one and a half"], Judge())
    assert judged.metrics["accuracy"] == 100.0
    assert judged.judge == "local-qwen"
    assert judged.metrics["judge_calls"] == 1.0


def test_length_mismatch_is_refused() -> None:
    with pytest.raises(ScoringError, match="differ in length"):
        score_vsr([True, False], ["yes"])
