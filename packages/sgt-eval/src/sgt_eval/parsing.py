"""Answer parsing rules of the official benchmark kits, rule-based and offline.

Each function names the kit whose rule it follows. None of them calls a language model; where an
official kit would fall back to one, the answer is treated as unparsed (and scored wrong).
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence
from typing import Literal

__all__ = [
    "extract_choice_letter",
    "extract_yes_no",
    "leading_choice_letter",
    "levenshtein",
    "mathvista_extract",
    "mathvista_normalize",
    "parse_number",
    "pope_yes_no",
    "sibench_hit",
    "sibench_mra",
]

YesNo = Literal["yes", "no"]

_PUNCT_TABLE = str.maketrans(dict.fromkeys(string.punctuation, " "))


def pope_yes_no(response: str) -> YesNo:
    """The official POPE rule (POPE / LLaVA / BAGEL ``eval_pope``).

    Only the first sentence counts (text before the first '.'); commas are dropped and the rest
    split on spaces. The answer is 'no' if 'No', 'not' or 'no' is among the words, else 'yes'.
    """
    first = response.split(".", 1)[0].replace(",", "")
    words = first.split(" ")
    if "No" in words or "not" in words or "no" in words:
        return "no"
    return "yes"


def extract_yes_no(response: str) -> YesNo | None:
    """VLMEvalKit's yes/no extraction: lower-case, punctuation out; yes-only -> yes, no-only -> no.

    Returns ``None`` (Unknown) when both or neither word appears.
    """
    words = response.lower().translate(_PUNCT_TABLE).split()
    has_yes, has_no = "yes" in words, "no" in words
    if has_yes and not has_no:
        return "yes"
    if has_no and not has_yes:
        return "no"
    return None


_LEADING = re.compile(r"[\(\s]*([A-Z])[\)\.\s]*", flags=re.IGNORECASE)


def leading_choice_letter(response: str) -> str | None:
    """lmms-eval 0.7.3's CV-Bench rule (``_extract_answer_letter``): the letter at the start.

    The response is stripped and ``[(\\s]*([A-Z])[).\\s]*`` is matched at its start ignoring case,
    and the letter upper-cased: '(B) left', 'B.', 'b' and '(b) two' give 'B' (and, as in
    lmms-eval, 'Apple' gives 'A').
    """
    m = _LEADING.match(response.strip())
    return m.group(1).upper() if m else None


def extract_choice_letter(
    response: str, letters: str = "ABCD", options: Sequence[str] | None = None
) -> str | None:
    """Multiple-choice letter extraction in the spirit of lmms-eval's ``extract_mcq_answer``.

    Tried in order: a bare letter (either case); a leading capital followed by ')', '.', ':' or a
    space, or a leading letter of either case in parentheses ('(a)'); 'answer
    is X'; 'option X'; exactly one standalone valid letter; exactly one option text contained in
    the response. Returns ``None`` when none applies or the evidence is ambiguous.
    """
    text = response.strip()
    valid = set(letters)
    if not text:
        return None
    if len(text) == 1 and text.upper() in valid:
        return text.upper()
    lead = re.match(r"^\(?([A-Z])(?:\)|\.|:|\s|$)", text)
    if lead and lead.group(1) in valid:
        return lead.group(1)
    # a lower-case letter in parentheses, as MMVP labels its options: '(a)', '(b) closed'
    lead = re.match(r"^\(([a-z])\)", text)
    if lead and lead.group(1).upper() in valid:
        return lead.group(1).upper()
    for pattern in (
        r"answer\s*(?:is|:)\s*:?\s*\(?([A-Z])\)?(?![A-Za-z])",
        r"option\s*\(?([A-Z])\)?(?![A-Za-z])",
    ):
        m = re.search(pattern, text, flags=re.IGNORECASE)
        if m and m.group(1).upper() in valid:
            return m.group(1).upper()
    standalone = {
        m.group(1) for m in re.finditer(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])", text)
    } & valid
    if len(standalone) == 1:
        return standalone.pop()
    if options:
        lowered = text.lower()
        hits = [
            letters[i] for i, opt in enumerate(options[: len(letters)]) if opt.lower() in lowered
        ]
        if len(hits) == 1:
            return hits[0]
    return None


_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def parse_number(text: str) -> float | None:
    """A bare number (SIBench's ``eval(pred)`` without evaluating code); ``None`` otherwise."""
    s = text.strip().rstrip(".").replace(",", "")
    if not _NUMBER.match(s):
        return None
    value = float(s)
    return value if math.isfinite(value) else None


def sibench_mra(prediction: float | None, truth: float) -> float:
    """Mean relative accuracy: mean over θ ∈ {0.50, 0.55, …, 0.95} of ``|p-t|/t < 1-θ``."""
    if prediction is None:
        return 0.0
    if truth == 0:
        return float(prediction == 0)
    rel = abs(prediction - truth) / abs(truth)
    thresholds = [0.50 + 0.05 * i for i in range(10)]
    return sum(rel < 1 - t for t in thresholds) / len(thresholds)


def sibench_hit(response: str, answer: str, qtype: str) -> float:
    """SIBench's strict per-type rule; returns the item score in [0, 1].

    MCQ: the response must start with a letter A–F followed by '.'/':', contain '(' in its first
    three characters, or start with a letter A–F; the letter is ``response[1]`` when there is a
    '(' and the text is cut at '.'/':'; the hit is exact equality with the answer. Responses the
    kit would send to its LLM extractor score 0 here. YN: the first three characters, lower-cased
    without punctuation, equal the answer. Number: MRA of a bare number. Number_Int: exact match.
    """
    pred = response.strip()
    if qtype == "MCQ":
        if not pred:
            return 0.0
        starts_letter = pred[0] in "ABCDEF"
        if not (starts_letter or "(" in pred[:3]):
            return 0.0
        if "(" in pred[:3] and len(pred) > 1:
            pred = pred[1] if pred[0] == "(" else pred[pred.index("(") + 1]
        pred = re.split(r"[.:]", pred, maxsplit=1)[0]
        return float(pred == answer.strip())
    if qtype == "YN":
        head = pred[:3].lower().translate(str.maketrans("", "", string.punctuation)).strip()
        return float(head == answer.strip().lower())
    if qtype == "Number":
        truth = parse_number(answer)
        if truth is None:
            raise ValueError(f"SIBench Number answer {answer!r} is not a number")
        return sibench_mra(parse_number(pred), truth)
    if qtype == "Number_Int":
        p, t = parse_number(pred), parse_number(answer)
        return float(p is not None and t is not None and p == t)
    raise ValueError(f"unknown SIBench question type {qtype!r}")


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


_QUICK = re.compile(r'The answer is "(.*)"\.')


def mathvista_extract(
    response: str, choices: Sequence[str] | None, question_type: str
) -> str | None:
    """MathVista's rule-only extraction (the official kit's LLM step is not run).

    A response that already is a choice or a number is kept; then the 'The answer is "X".' quick
    pattern; then a choice letter; for free-form questions the last number in the response.
    ``None`` when no rule applies (where the official kit would ask its LLM).
    """
    text = response.strip()
    if question_type == "multi_choice" and choices and text in choices:
        return text
    if parse_number(text) is not None:
        return text
    m = _QUICK.search(text)
    if m:
        return m.group(1).strip()
    if question_type == "multi_choice" and choices:
        letter = extract_choice_letter(text, "ABCDEFGH"[: len(choices)], choices)
        if letter is not None:
            return letter
    if question_type != "multi_choice":
        numbers = re.findall(r"[+-]?\d+(?:\.\d+)?", text.replace(",", ""))
        if numbers:
            return str(numbers[-1])
    return None


def mathvista_normalize(
    extraction: str,
    choices: Sequence[str] | None,
    question_type: str,
    answer_type: str,
    precision: int | None,
) -> str | None:
    """MathVista's normalisation before string comparison with the answer.

    Multiple choice: a letter maps to its choice, other text to the closest choice by edit
    distance. Integer: ``int(float(x))``. Float: rounded to ``precision``. List and text: as is.
    """
    if question_type == "multi_choice":
        if not choices:
            return extraction
        letters = "ABCDEFGH"[: len(choices)]
        stripped = extraction.strip().strip("()")
        if len(stripped) == 1 and stripped.upper() in letters:
            return choices[letters.index(stripped.upper())]
        return min(choices, key=lambda c: levenshtein(extraction, c))
    if answer_type == "integer":
        value = parse_number(extraction)
        return None if value is None else str(int(value))
    if answer_type == "float":
        value = parse_number(extraction)
        return None if value is None else str(round(value, precision or 0))
    return extraction
