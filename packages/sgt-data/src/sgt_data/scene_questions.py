"""Questions and prompts about scenes, with the answers the scene's ground truth implies.

Two question sets come from one scene (both deterministic per scene seed, drawn from a generator
of their own so that the images never depend on them):

* :func:`scene_questions`, the training mix (LLaVA-style): POPE-style existence, counting, colour,
  GenEval-rule relations and nearer/farther;
* :func:`benchmark_questions`, the held-out benchmark set (see its docstring).

:func:`scene_prompt` writes the GenEval-style text-to-image prompt of a scene.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from sgt_data._scene_model import (
    _AFFINITY,
    _CLASS_PRIOR,
    SCENE_CLASSES,
    SCENE_COLORS,
    Scene,
    SceneConfig,
    SceneObject,
    geneval_relations,
)

__all__ = [
    "PERCEPTION_TYPES",
    "POPE_SPLITS",
    "REASONING_TYPES",
    "ScenePrompt",
    "SceneQuestion",
    "benchmark_questions",
    "reasoning_questions",
    "scene_prompt",
    "scene_questions",
]


_PLURALS = {name: name + "s" for name in SCENE_CLASSES}
_NUMBER_WORDS = {0: "zero", 1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
_SHORT_ANSWER = "Answer the question using a single word or phrase."
_MCQ_ANSWER = "Answer with the option's letter from the given choices directly."
#: GenEval relation -> English phrase used in questions.
_RELATION_PHRASES = {
    "left of": "to the left of",
    "right of": "to the right of",
    "above": "above",
    "below": "below",
}
_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


QuestionType = Literal[
    "existence",
    "counting",
    "color",
    "relation",
    "depth",
    "count_sum",
    "count_compare",
    "count_difference",
]
#: Question types that read one property off the image (existence, counting, colour, position,
#: depth order) ...
PERCEPTION_TYPES: tuple[str, ...] = ("existence", "counting", "color", "relation", "depth")
#: ... and those answerable only by combining several perceived counts (arithmetic, comparisons).
REASONING_TYPES: tuple[str, ...] = ("count_sum", "count_compare", "count_difference")
#: Per scene of the benchmark set: at most this many positives (and as many negatives) per POPE
#: split, present classes counted, and object pairs asked about for position and for depth order
#: (sized so that 240 held-out scenes give at least 400 items per benchmark: see the README).
_POPE_PER_SPLIT = 1
_COUNTED = 2
_PAIRS = 2
#: POPE's negative-sampling splits.
POPE_SPLITS: tuple[str, ...] = ("adversarial", "popular", "random")


@dataclass(frozen=True)
class SceneQuestion:
    """One question about a scene with the answer its content implies."""

    question_type: QuestionType
    question: str
    answer: str
    metadata: dict[str, str | int | float | bool]


@dataclass(frozen=True)
class ScenePrompt:
    """A text-to-image prompt true of a scene, with GenEval metadata."""

    tag: Literal["single_object", "two_object", "counting", "colors", "position", "color_attr"]
    prompt: str
    include: tuple[dict[str, Any], ...]
    exclude: tuple[dict[str, Any], ...] = ()

    def to_geneval(self) -> dict[str, Any]:
        """The GenEval ``evaluation_metadata.jsonl`` record of this prompt."""
        record: dict[str, Any] = {"tag": self.tag, "include": [dict(c) for c in self.include]}
        if self.exclude:
            record["exclude"] = [dict(c) for c in self.exclude]
        record["prompt"] = self.prompt
        return record


def _references(scene: Scene) -> list[str | None]:
    """How each shape can be named uniquely: its class, else colour + class, else not at all."""
    class_counts: dict[str, int] = {}
    pair_counts: dict[tuple[str, str], int] = {}
    for obj in scene.objects:
        class_counts[obj.class_name] = class_counts.get(obj.class_name, 0) + 1
        key = (obj.color, obj.class_name)
        pair_counts[key] = pair_counts.get(key, 0) + 1
    refs: list[str | None] = []
    for obj in scene.objects:
        if class_counts[obj.class_name] == 1:
            refs.append(obj.class_name)
        elif pair_counts[(obj.color, obj.class_name)] == 1:
            refs.append(f"{obj.color} {obj.class_name}")
        else:
            refs.append(None)
    return refs


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _pope_negatives(present: set[int], rng: np.random.Generator) -> list[tuple[int, str]]:
    """Absent classes chosen as POPE does: adversarial (co-occurring), popular, random."""
    absent = [c for c in range(len(SCENE_CLASSES)) if c not in present]
    chosen: list[tuple[int, str]] = []
    if absent:
        affinity = [sum(_AFFINITY[c, p] for p in present) for c in absent]
        best = max(zip(affinity, _CLASS_PRIOR[absent], absent, strict=True))[2]
        chosen.append((best, "adversarial"))
        absent.remove(best)
    if absent:
        best = max(zip(_CLASS_PRIOR[absent], absent, strict=True))[1]
        chosen.append((best, "popular"))
        absent.remove(best)
    if absent:
        chosen.append((absent[int(rng.integers(len(absent)))], "random"))
    return chosen


def scene_questions(scene: Scene, config: SceneConfig | None = None) -> list[SceneQuestion]:
    """Questions about a scene with the answers its content implies (deterministic per seed)."""
    cfg = config or SceneConfig()
    rng = np.random.default_rng([scene.seed, 1])
    objs = scene.objects
    questions: list[SceneQuestion] = []
    counts: dict[int, int] = {}
    for obj in objs:
        counts[obj.category_id - 1] = counts.get(obj.category_id - 1, 0) + 1

    # existence, balanced as in POPE: as many absent classes (by strategy) as present ones
    present = sorted(counts)
    negatives = _pope_negatives(set(counts), rng)[: len(present)]
    positives = [present[int(i)] for i in rng.permutation(len(present))[: len(negatives)]]
    for cls in positives:
        questions.append(_existence(cls, True, "positive"))
    for cls, strategy in negatives:
        questions.append(_existence(cls, False, strategy))

    # counting: one present class, and sometimes an absent one
    count_classes = [present[int(rng.integers(len(present)))]] if present else []
    if negatives and rng.random() < 0.25:
        count_classes.append(negatives[-1][0])
    for cls in count_classes:
        name = _PLURALS[SCENE_CLASSES[cls]]
        questions.append(
            SceneQuestion(
                "counting",
                f"How many {name} are in the image?\n{_SHORT_ANSWER}",
                str(counts.get(cls, 0)),
                {"class": SCENE_CLASSES[cls]},
            )
        )

    # colour of classes that appear once
    unique = [i for i, obj in enumerate(objs) if counts[obj.category_id - 1] == 1]
    for i in [unique[int(k)] for k in rng.permutation(len(unique))[:2]]:
        questions.append(
            SceneQuestion(
                "color",
                f"What color is the {objs[i].class_name}?\n{_SHORT_ANSWER}",
                objs[i].color,
                {"class": objs[i].class_name},
            )
        )

    named = {i: r for i, r in enumerate(_references(scene)) if r is not None}
    pairs = [_Pair(objs[a], objs[b], named[a], named[b]) for a in named for b in named if a != b]
    pairs = [pairs[int(k)] for k in rng.permutation(len(pairs))]
    questions += _first_questions(pairs, lambda pair: _relation_question(pair, cfg, rng))
    questions += _first_questions(pairs, lambda pair: _depth_question(pair, cfg, rng))
    return questions


def _existence(cls: int, present: bool, strategy: str) -> SceneQuestion:
    name = SCENE_CLASSES[cls]
    return SceneQuestion(
        "existence",
        f"Is there {_article(name)} {name} in the image?\n{_SHORT_ANSWER}",
        "Yes" if present else "No",
        {"class": name, "pope_split": strategy},
    )


@dataclass(frozen=True)
class _Pair:
    """Two shapes of a scene that can be named, in the order a question names them."""

    a: SceneObject
    b: SceneObject
    ref_a: str
    ref_b: str


def _first_questions(
    pairs: list[_Pair], ask: Callable[[_Pair], SceneQuestion | None], limit: int = 2
) -> list[SceneQuestion]:
    """The questions ``ask`` writes about ``pairs`` in order (None: the pair decides nothing),
    the first ``limit`` of them (the pairs after those are not asked about)."""
    out: list[SceneQuestion] = []
    for pair in pairs:
        if len(out) >= limit:
            break
        question = ask(pair)
        if question is not None:
            out.append(question)
    return out


def _relation_question(
    pair: _Pair, cfg: SceneConfig, rng: np.random.Generator
) -> SceneQuestion | None:
    """A yes/no relation question, asked only where GenEval's rule decides the axis."""
    held = sorted(geneval_relations(pair.a.bbox, pair.b.bbox, cfg.relation_margin))
    if not held:
        return None
    relation = held[int(rng.integers(len(held)))]
    truthful = bool(rng.random() < 0.5)
    asked = relation if truthful else _OPPOSITE[relation]
    return SceneQuestion(
        "relation",
        f"Is the {pair.ref_a} {_RELATION_PHRASES[asked]} the {pair.ref_b}?\n{_SHORT_ANSWER}",
        "Yes" if truthful else "No",
        {"relation": asked},
    )


def _depth_question(
    pair: _Pair, cfg: SceneConfig, rng: np.random.Generator
) -> SceneQuestion | None:
    """A CV-Bench style two-choice nearer/farther question, only for depths beyond the margin."""
    da, db = pair.a.depth_m, pair.b.depth_m
    if abs(da - db) < cfg.depth_margin_m:
        return None
    closer = bool(rng.random() < 0.5)
    word = "closer to" if closer else "farther from"
    return SceneQuestion(
        "depth",
        f"Which object is {word} the camera, the {pair.ref_a} or the {pair.ref_b}?\n"
        f"(A) {pair.ref_a}\n(B) {pair.ref_b}\n{_MCQ_ANSWER}",
        "A" if (da < db) == closer else "B",
        {"comparison": "closer" if closer else "farther"},
    )


# --------------------------------------------------------------------------- the benchmark set


def benchmark_questions(scene: Scene, config: SceneConfig | None = None) -> list[SceneQuestion]:
    """The held-out benchmark questions of a scene, in the training mix's formats.

    Perception, every yes/no and two-choice type balanced within the scene:

    * existence, per POPE split (``metadata["pope_split"]``: random, popular, adversarial): as in
      POPE, each split asks about a present class ("Yes") and as many absent ones drawn by the
      split's strategy ("No"), so every split is exactly 50/50 (one of each per scene that has
      both; positives are drawn per split, so the splits may repeat one, as POPE's do);
    * counting: up to 2 present classes, and one absent class (answer 0);
    * colour: every shape whose class occurs once;
    * position (GenEval's rule, type ``relation``): for up to 2 pairs with a decided relation, the
      true relation ("Yes") and its opposite ("No");
    * depth order: for up to 2 pairs whose depths differ by ``depth_margin_m``, "closer" and
      "farther" with the same two options (one answer "A", the other "B").

    Reasoning: :func:`reasoning_questions`.
    """
    cfg = config or SceneConfig()
    rng = np.random.default_rng([scene.seed, 3])
    objs = scene.objects
    counts = _class_counts(scene)
    present = sorted(counts)
    absent = [c for c in range(len(SCENE_CLASSES)) if c not in counts]
    questions: list[SceneQuestion] = []

    k = min(len(present), len(absent), _POPE_PER_SPLIT)
    if k:
        affinity = {c: sum(_AFFINITY[c, p] for p in present) for c in absent}
        ranked = {
            "adversarial": sorted(absent, key=lambda c: (-affinity[c], -_CLASS_PRIOR[c], c)),
            "popular": sorted(absent, key=lambda c: (-_CLASS_PRIOR[c], c)),
            "random": [absent[int(i)] for i in rng.permutation(len(absent))],
        }
        for split in POPE_SPLITS:
            for cls in (present[int(i)] for i in rng.permutation(len(present))[:k]):
                questions.append(_existence(cls, True, split))
            for cls in ranked[split][:k]:
                questions.append(_existence(cls, False, split))

    count_classes = [present[int(i)] for i in rng.permutation(len(present))[:_COUNTED]]
    count_classes += [absent[int(rng.integers(len(absent)))]] if absent else []
    for cls in count_classes:
        questions.append(_counting(cls, counts.get(cls, 0)))

    for obj in objs:
        if counts[obj.category_id - 1] == 1:
            questions.append(
                SceneQuestion(
                    "color",
                    f"What color is the {obj.class_name}?\n{_SHORT_ANSWER}",
                    obj.color,
                    {"class": obj.class_name},
                )
            )

    refs = _references(scene)
    named = [i for i, r in enumerate(refs) if r is not None]
    pairs = [(a, b) for n, a in enumerate(named) for b in named[n + 1 :]]
    pairs = [pairs[int(i)] for i in rng.permutation(len(pairs))]
    pairs = [(a, b) if rng.random() < 0.5 else (b, a) for a, b in pairs]
    asked = 0
    for a, b in pairs:
        held = sorted(geneval_relations(objs[a].bbox, objs[b].bbox, cfg.relation_margin))
        if asked == _PAIRS or not held:
            continue
        relation = held[int(rng.integers(len(held)))]
        for phrase, answer in ((relation, "Yes"), (_OPPOSITE[relation], "No")):
            questions.append(
                SceneQuestion(
                    "relation",
                    f"Is the {refs[a]} {_RELATION_PHRASES[phrase]} the {refs[b]}?\n{_SHORT_ANSWER}",
                    answer,
                    {"relation": phrase},
                )
            )
        asked += 1
    asked = 0
    for a, b in pairs:
        da, db = objs[a].depth_m, objs[b].depth_m
        if asked == _PAIRS or abs(da - db) < cfg.depth_margin_m:
            continue
        for closer in (True, False):
            word = "closer to" if closer else "farther from"
            questions.append(
                SceneQuestion(
                    "depth",
                    f"Which object is {word} the camera, the {refs[a]} or the {refs[b]}?\n"
                    f"(A) {refs[a]}\n(B) {refs[b]}\n{_MCQ_ANSWER}",
                    "A" if (da < db) == closer else "B",
                    {"comparison": "closer" if closer else "farther"},
                )
            )
        asked += 1
    return questions + reasoning_questions(scene)


def reasoning_questions(scene: Scene, per_type: int = 2) -> list[SceneQuestion]:
    """Questions answerable only by combining perceived counts (deterministic per seed).

    Over pairs of attributes of one kind (two classes, or two colours as "red shapes"):

    * ``count_sum``: "How many circles and squares are there in total?" (the sum of both counts;
      pairs with at least one present attribute);
    * ``count_compare``: "Are there more red shapes than blue shapes?" asked both ways round about
      pairs whose counts differ ("Yes" one way, "No" the other: balanced);
    * ``count_difference``: "How many more stars than triangles are there?" about pairs with the
      first count larger (the difference, at least 1).

    Pairs where both attributes are present come first (for sums only the first pair, then pairs
    in a second random order, and for differences the largest differences first, so that no
    single answer dominates; the majority baseline is reported with the scores).
    At most ``per_type`` questions per type (a compare pair gives two, so ``ceil(per_type / 2)``
    pairs are compared).
    """
    rng = np.random.default_rng([scene.seed, 4])
    by_class = dict.fromkeys(SCENE_CLASSES, 0)
    by_color = dict.fromkeys(SCENE_COLORS, 0)
    for obj in scene.objects:
        by_class[obj.class_name] += 1
        by_color[obj.color] += 1
    nouns: list[tuple[str, str, int]] = [("class", _PLURALS[c], n) for c, n in by_class.items()]
    nouns += [("color", f"{c} shapes", n) for c, n in by_color.items()]
    pairs = [
        (x, y)
        for i, x in enumerate(nouns)
        for y in nouns[i + 1 :]
        if x[0] == y[0] and (x[2] or y[2])
    ]
    pairs = [pairs[int(i)] for i in rng.permutation(len(pairs))]
    pairs = [(x, y) if rng.random() < 0.5 else (y, x) for x, y in pairs]
    pairs.sort(key=lambda xy: not (xy[0][2] and xy[1][2]))  # stable: both present first
    out: list[SceneQuestion] = []
    # sums: the first pair (both present where possible), then pairs in drawn order, so that
    # sums of one count and of two counts mix (always two ones would make "2" the answer)
    drawn = [pairs[int(i)] for i in rng.permutation(len(pairs))]
    sums = pairs[:1] + [xy for xy in drawn if xy != pairs[0]] if pairs else []
    for x, y in sums[:per_type]:
        out.append(
            SceneQuestion(
                "count_sum",
                f"How many {x[1]} and {y[1]} are there in total?\n{_SHORT_ANSWER}",
                str(x[2] + y[2]),
                {"attribute": x[0], "first": x[1], "second": y[1]},
            )
        )
    differing = [(x, y) for x, y in pairs if x[2] != y[2]]
    for x, y in differing[: (per_type + 1) // 2]:
        for first, second in ((x, y), (y, x)):
            out.append(
                SceneQuestion(
                    "count_compare",
                    f"Are there more {first[1]} than {second[1]}?\n{_SHORT_ANSWER}",
                    "Yes" if first[2] > second[2] else "No",
                    {"attribute": x[0], "first": first[1], "second": second[1]},
                )
            )
    # the largest differences first: most differing pairs differ by one, which would otherwise
    # make "1" the answer to nearly every difference question
    by_gap = sorted(differing, key=lambda xy: -abs(xy[0][2] - xy[1][2]))
    for x, y in by_gap[:per_type]:
        big, small = (x, y) if x[2] > y[2] else (y, x)
        out.append(
            SceneQuestion(
                "count_difference",
                f"How many more {big[1]} than {small[1]} are there?\n{_SHORT_ANSWER}",
                str(big[2] - small[2]),
                {"attribute": x[0], "first": big[1], "second": small[1]},
            )
        )
    return out


def _class_counts(scene: Scene) -> dict[int, int]:
    counts: dict[int, int] = {}
    for obj in scene.objects:
        counts[obj.category_id - 1] = counts.get(obj.category_id - 1, 0) + 1
    return counts


def _counting(cls: int, count: int) -> SceneQuestion:
    return SceneQuestion(
        "counting",
        f"How many {_PLURALS[SCENE_CLASSES[cls]]} are in the image?\n{_SHORT_ANSWER}",
        str(count),
        {"class": SCENE_CLASSES[cls]},
    )


def scene_prompt(scene: Scene, config: SceneConfig | None = None) -> ScenePrompt | None:
    """A GenEval-style text-to-image prompt true of the scene (tag drawn among those that apply)."""
    cfg = config or SceneConfig()
    rng = np.random.default_rng([scene.seed, 2])
    objs = scene.objects
    if not objs:
        return None
    counts: dict[str, int] = {}
    for obj in objs:
        counts[obj.class_name] = counts.get(obj.class_name, 0) + 1
    classes = sorted(counts)
    singles = [o for o in objs if counts[o.class_name] == 1]
    options: list[ScenePrompt] = []

    c = classes[int(rng.integers(len(classes)))]
    options.append(
        ScenePrompt("single_object", f"a photo of {_article(c)} {c}", ({"class": c, "count": 1},))
    )
    if len(classes) >= 2:
        c1, c2 = (classes[int(i)] for i in rng.permutation(len(classes))[:2])
        options.append(
            ScenePrompt(
                "two_object",
                f"a photo of {_article(c1)} {c1} and {_article(c2)} {c2}",
                ({"class": c1, "count": 1}, {"class": c2, "count": 1}),
            )
        )
    multi = [k for k in classes if 2 <= counts[k] <= 4]
    if multi:
        k = multi[int(rng.integers(len(multi)))]
        n = counts[k]
        options.append(
            ScenePrompt(
                "counting",
                f"a photo of {_NUMBER_WORDS[n]} {_PLURALS[k]}",
                ({"class": k, "count": n},),
                ({"class": k, "count": n + 1},),
            )
        )
    if singles:
        o = singles[int(rng.integers(len(singles)))]
        options.append(
            ScenePrompt(
                "colors",
                f"a photo of {_article(o.color)} {o.color} {o.class_name}",
                ({"class": o.class_name, "count": 1, "color": o.color},),
            )
        )
    if len(singles) >= 2:
        i, j = (int(v) for v in rng.permutation(len(singles))[:2])
        a, b = singles[i], singles[j]
        held = sorted(geneval_relations(a.bbox, b.bbox, cfg.relation_margin))
        if held:
            rel = held[int(rng.integers(len(held)))]
            options.append(
                ScenePrompt(
                    "position",
                    f"a photo of {_article(a.class_name)} {a.class_name} {rel} "
                    f"{_article(b.class_name)} {b.class_name}",
                    (
                        {"class": b.class_name, "count": 1},
                        {"class": a.class_name, "count": 1, "position": [rel, 0]},
                    ),
                )
            )
        options.append(
            ScenePrompt(
                "color_attr",
                f"a photo of {_article(a.color)} {a.color} {a.class_name} and "
                f"{_article(b.color)} {b.color} {b.class_name}",
                (
                    {"class": a.class_name, "count": 1, "color": a.color},
                    {"class": b.class_name, "count": 1, "color": b.color},
                ),
            )
        )
    return options[int(rng.integers(len(options)))]
