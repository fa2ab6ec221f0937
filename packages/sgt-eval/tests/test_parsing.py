"""The official answer-parsing rules on their edge cases."""

import pytest

from sgt_eval.parsing import (
    extract_choice_letter,
    extract_yes_no,
    leading_choice_letter,
    levenshtein,
    mathvista_extract,
    mathvista_normalize,
    parse_number,
    pope_yes_no,
    sibench_hit,
    sibench_mra,
)


@pytest.mark.parametrize(
    ("response", "parsed"),
    [
        ("Yes, there is a dog.", "yes"),
        ("No.", "no"),
        ("There is not a dog in the image", "no"),
        ("no, there isn't", "no"),
        ("Yes. No other animals are visible.", "yes"),  # only the first sentence counts
        ("Nope", "yes"),  # the official rule only knows No / not / no as words
        ("I don't know", "yes"),  # anything without a negation word is yes
        ("NO", "yes"),  # case-sensitive: 'NO' is not among the words
    ],
)
def test_pope_first_sentence_rule(response: str, parsed: str) -> None:
    assert pope_yes_no(response) == parsed


@pytest.mark.parametrize(
    ("response", "parsed"),
    [
        ("Yes.", "yes"),
        ("No, it is not.", "no"),
        ("yes and no", None),
        ("Maybe", None),
        ("YES!", "yes"),
    ],
)
def test_vlmevalkit_yes_no(response: str, parsed: str | None) -> None:
    assert extract_yes_no(response) == parsed


@pytest.mark.parametrize(
    ("response", "letter"),
    [
        ("(B) left", "B"),
        ("B.", "B"),
        ("  C", "C"),
        ("b", "B"),  # lmms-eval 0.7.3 strips and ignores case
        ("(b) two", "B"),
        ("apple", "A"),  # as lmms-eval: the first letter, whatever follows
        ("Apple", "A"),
        ("", None),
        ("42", None),
    ],
)
def test_cv_bench_leading_letter(response: str, letter: str | None) -> None:
    assert leading_choice_letter(response) == letter


CV_BENCH_RESPONSES = ["b", "(b) two", "B.", " (C) ", "apple", "The answer is B", "", "42", "\nd"]


def test_cv_bench_leading_letter_equals_lmms_eval() -> None:
    """Against the real rule where lmms-eval is installed (its own nox environment)."""
    official = pytest.importorskip("lmms_eval.tasks.cv_bench.utils")
    for response in CV_BENCH_RESPONSES:
        assert (leading_choice_letter(response) or "") == official._extract_answer_letter(
            response
        ), response


@pytest.mark.parametrize(
    ("response", "letter"),
    [
        ("b", "B"),
        ("(A) red", "A"),
        ("C: three", "C"),
        ("The answer is C.", "C"),
        ("I would pick option (B) here", "B"),
        ("It is the red one", "B"),  # option text
        ("either A or B is plausible", None),  # two standalone letters: ambiguous
        ("E", None),  # not a valid letter
        ("red or blue", None),  # two option texts: ambiguous
    ],
)
def test_choice_letter_extraction(response: str, letter: str | None) -> None:
    assert extract_choice_letter(response, "ABCD", ["blue", "red", "green", "yellow"]) == letter


@pytest.mark.parametrize(
    ("response", "answer", "score"),
    [
        ("A", "A", 1.0),
        ("A. a cat", "A", 1.0),
        ("(B)", "B", 1.0),
        ("A) foo", "A", 0.0),  # strict: not cut at ')'
        ("Apple", "A", 0.0),
        ("The answer is A", "A", 0.0),  # the kit would ask its LLM; we score 0
    ],
)
def test_sibench_mcq_strictness(response: str, answer: str, score: float) -> None:
    assert sibench_hit(response, answer, "MCQ") == score


def test_sibench_yes_no_and_numbers() -> None:
    assert sibench_hit("Yes, it is", "Yes", "YN") == 1.0
    assert sibench_hit("No.", "no", "YN") == 1.0
    assert sibench_hit("Not sure", "no", "YN") == 0.0
    assert sibench_hit("10", "10", "Number") == 1.0
    # |12-10|/10 = 0.2 < 1-θ holds for θ in 0.50..0.75 (6 of 10 thresholds)
    assert sibench_hit("12", "10", "Number") == pytest.approx(0.6)
    assert sibench_hit("about 10", "10", "Number") == 0.0
    assert sibench_mra(None, 3.0) == 0.0
    assert sibench_hit("3", "3", "Number_Int") == 1.0
    assert sibench_hit("3.5", "3", "Number_Int") == 0.0
    with pytest.raises(ValueError, match="question type 'Essay'"):
        sibench_hit("x", "y", "Essay")


def test_parse_number_refuses_code_and_words() -> None:
    assert parse_number(" 1,024. ") == 1024.0
    assert parse_number("-3.5e1") == -35.0
    assert parse_number("__import__('os')") is None
    assert parse_number("ten") is None


def test_mathvista_rule_extraction_and_normalisation() -> None:
    choices = ["one", "two", "three"]
    assert mathvista_normalize("B", choices, "multi_choice", "text", None) == "two"
    assert mathvista_normalize("tow", choices, "multi_choice", "text", None) == "two"
    assert levenshtein("tow", "two") == 2
    assert levenshtein("kitten", "sitting") == 3
    assert mathvista_extract('The answer is "3".', None, "free_form") == "3"
    assert mathvista_extract("so x = 12 cm", None, "free_form") == "12"
    assert mathvista_extract("I choose (C)", choices, "multi_choice") == "C"
    assert mathvista_normalize("3.0", None, "free_form", "integer", None) == "3"
    assert mathvista_normalize("2.345", None, "free_form", "float", 1) == "2.3"
    assert mathvista_normalize("n/a", None, "free_form", "integer", None) is None


@pytest.mark.parametrize(
    ("response", "letter"), [("(a)", "A"), ("(b) closed", "B"), ("a cat", None), ("both", None)]
)
def test_mmvp_lower_case_option_labels_parse(response: str, letter: str | None) -> None:
    assert extract_choice_letter(response, "AB") == letter


def test_differences_from_lmms_eval_are_recorded_as_deviations() -> None:
    from sgt_eval.scoring import understanding as sc

    results = [
        sc.score_mmvp([1, 2], ["(a)", "(b)"], ["(a)", "b"]),
        sc.score_mmstar(["A"], ["c"], ["A"]),
        sc.score_realworldqa(["B"], ["B"]),
        *sc.score_pope(["random"], ["yes"], ["Yes."]),
    ]
    for result in results:
        assert any("lmms-eval 0.7.3" in d for d in result.deviations), result.benchmark
    cv = sc.score_cv_bench(["(B)"], ["COCO"], ["(b) two"])
    assert cv.metrics["micro_accuracy"] == 100.0  # parsed as lmms-eval 0.7.3 does: no deviation
    assert not any("lmms-eval" in d for d in cv.deviations)
