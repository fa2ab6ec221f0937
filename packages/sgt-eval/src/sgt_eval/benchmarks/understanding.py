"""Loaders of the understanding benchmarks from local copies, with their prompts and scorers.

Each ``load_*`` function reads the published layout (file or folder), checks the row count
against the published size (``expected_rows``; ``None`` for a subset) and the revision (when
``revision`` is given), and returns a ``VQABenchmark`` whose ``score`` applies the official rule.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sgt_eval.benchmarks.tables import (
    BenchmarkDataError,
    ImageRef,
    check_revision,
    check_row_count,
    read_table,
)
from sgt_eval.report import BenchmarkResult
from sgt_eval.scoring import understanding as sc

__all__ = [
    "BENCHMARK_LOADERS",
    "OFFICIAL_ROWS",
    "VQABenchmark",
    "VQAItem",
    "load_cv_bench",
    "load_hallusionbench",
    "load_mathvista",
    "load_mmstar",
    "load_mmvp",
    "load_pope",
    "load_realworldqa",
    "load_sibench",
    "load_vsr",
]

#: Published sizes of the sets the paper evaluates (RealWorldQA's is unverified).
OFFICIAL_ROWS: dict[str, int | None] = {
    "cv-bench": 2638,
    "mmvp": 300,
    "vsr": 1222,
    "sibench": None,
    "pope": 9000,
    "hallusionbench": 951,
    "mmstar": 1500,
    "realworldqa": 765,
    "mathvista": 1000,
}

_LETTER_SUFFIX = "\nAnswer with the option's letter from the given choices directly."


@dataclass(frozen=True)
class VQAItem:
    """One question: its image, the prompt sent to the model, the answer and scoring fields."""

    id: str
    image: ImageRef
    prompt: str
    answer: str
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VQABenchmark:
    """A loaded understanding benchmark: items plus the official scorer."""

    name: str
    items: tuple[VQAItem, ...]
    files: tuple[Path, ...]
    revision: str
    max_new_tokens: int
    scorer: Callable[[Sequence[VQAItem], Sequence[str]], list[BenchmarkResult]]
    deviations: tuple[str, ...] = ()

    def score(self, responses: Sequence[str]) -> list[BenchmarkResult]:
        """Official scores of the responses (one per item, in order), with revision recorded."""
        if len(responses) != len(self.items):
            raise sc.ScoringError(
                f"{self.name}: {len(responses)} responses for {len(self.items)} items"
            )
        results = self.scorer(self.items, responses)
        return [
            r.model_copy(
                update={
                    "data_revision": self.revision,
                    "deviations": (*r.deviations, *self.deviations),
                }
            )
            for r in results
        ]


def _resolve(path: str | Path, candidates: Sequence[str]) -> list[Path]:
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise BenchmarkDataError(f"{p}: no such file or folder")
    for pattern in candidates:
        found = sorted(p.glob(pattern))
        if found:
            return found
    raise BenchmarkDataError(f"{p}: none of {list(candidates)} found")


def _get(row: Mapping[str, Any], keys: Sequence[str], where: str) -> Any:
    for key in keys:
        if key in row and row[key] is not None and row[key] != "":
            return row[key]
    raise BenchmarkDataError(f"{where}: missing field {' / '.join(keys)}")


def _load_rows(
    name: str, files: Sequence[Path], expected_rows: int | None, revision: str | None
) -> tuple[list[tuple[Path, int, dict[str, Any]]], str]:
    rows = [(f, i, r) for f in files for i, r in enumerate(read_table(f))]
    check_row_count(name, files, len(rows), expected_rows)
    return rows, check_revision(files, revision)


def _choices(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    return [str(v) for v in value] if isinstance(value, list | tuple) else None


def load_cv_bench(
    path: str | Path,
    expected_rows: int | None = OFFICIAL_ROWS["cv-bench"],
    revision: str | None = None,
) -> VQABenchmark:
    """CV-Bench ``test.parquet`` or ``test_2d.jsonl`` + ``test_3d.jsonl`` (+ ``img/``)."""
    files = _resolve(path, ["test.parquet", "test_[23]d.jsonl", "*.parquet", "*.jsonl"])
    rows, rev = _load_rows("cv-bench", files, expected_rows, revision)
    items = []
    for f, i, row in rows:
        where = f"{f} row {i}"
        prompt = row.get("prompt") or _get(row, ["question"], where)
        items.append(
            VQAItem(
                id=str(row.get("idx", i)),
                image=ImageRef((_get(row, ["image", "filename"], where),), f.parent, where),
                prompt=str(prompt) + _LETTER_SUFFIX,
                answer=str(_get(row, ["answer"], where)),
                fields={"source": str(_get(row, ["source"], where))},
            )
        )

    def score(items: Sequence[VQAItem], responses: Sequence[str]) -> list[BenchmarkResult]:
        return [
            sc.score_cv_bench(
                [it.answer for it in items], [it.fields["source"] for it in items], responses
            )
        ]

    return VQABenchmark("cv-bench", tuple(items), tuple(files), rev, 16, score)


_MMVP_OPTIONS = re.compile(r"\(a\)\s*(.*?)\s*\(b\)\s*(.*)", re.IGNORECASE | re.DOTALL)


def load_mmvp(
    path: str | Path,
    expected_rows: int | None = OFFICIAL_ROWS["mmvp"],
    revision: str | None = None,
) -> VQABenchmark:
    """MMVP ``Questions.csv`` + ``MMVP Images/<Index>.jpg``, or a parquet with an image column."""
    files = _resolve(path, ["Questions.csv", "*.parquet"])
    rows, rev = _load_rows("mmvp", files, expected_rows, revision)
    items = []
    for f, i, row in rows:
        where = f"{f} row {i}"
        index = int(_get(row, ["Index", "index"], where))
        options = str(_get(row, ["Options", "options"], where))
        m = _MMVP_OPTIONS.match(options.strip())
        if m is None:
            raise BenchmarkDataError(f"{where}: options {options!r} are not '(a) X (b) Y'")
        question = str(_get(row, ["Question", "question"], where))
        answer = str(_get(row, ["Correct Answer", "answer"], where)).strip().strip("()").upper()
        image = row.get("image") or Path("MMVP Images") / f"{index}.jpg"
        items.append(
            VQAItem(
                id=str(index),
                image=ImageRef((image,), f.parent, where),
                prompt=f"{question}\nA. {m.group(1)}\nB. {m.group(2)}"
                "\nAnswer with the option's letter from the given choices directly.",
                answer=answer,
                fields={"index": index},
            )
        )

    def score(items: Sequence[VQAItem], responses: Sequence[str]) -> list[BenchmarkResult]:
        return [
            sc.score_mmvp(
                [int(it.fields["index"]) for it in items], [it.answer for it in items], responses
            )
        ]

    return VQABenchmark("mmvp", tuple(items), tuple(files), rev, 16, score)


def load_vsr(
    path: str | Path,
    image_root: str | Path,
    expected_rows: int | None = OFFICIAL_ROWS["vsr"],
    revision: str | None = None,
) -> VQABenchmark:
    """VSR zero-shot ``test.jsonl``; images are COCO-2017 files under ``image_root``."""
    files = _resolve(path, ["test.jsonl", "data/splits/zeroshot/test.jsonl"])
    rows, rev = _load_rows("vsr", files, expected_rows, revision)
    items = []
    for f, i, row in rows:
        where = f"{f} row {i}"
        caption = str(_get(row, ["caption"], where))
        label = _get(row, ["label"], where)
        items.append(
            VQAItem(
                id=str(i),
                image=ImageRef((str(_get(row, ["image"], where)),), Path(image_root), where),
                prompt=f"Is the following statement about the image true? {caption}\n"
                "Answer yes or no.",
                answer="yes" if str(label).strip().lower() in ("1", "true") else "no",
            )
        )

    def score(items: Sequence[VQAItem], responses: Sequence[str]) -> list[BenchmarkResult]:
        return [sc.score_vsr([it.answer == "yes" for it in items], responses)]

    return VQABenchmark(
        "vsr",
        tuple(items),
        tuple(files),
        rev,
        16,
        score,
        ("prompt is ours: VSR has no official instruction prompt",),
    )


_SIBENCH_EXTRA_SOURCES = {
    "vstibench",
    "MMSI-Bench",
    "3DSRBench",
    "OmniSpatial",
    "Spatial-MM",
    "SpatialMQA",
    "VSI-Bench",
    "STI-Bench",
    "SpatialEval",
    "SITE-Bench",
    "SPHERE-VLM",
    "SRBench",
    "BLINK",
}
_SIBENCH_SUFFIX = {
    "MCQ": "\nSelect from the given options, answer with letters only.",
    "YN": "\nAnswer with 'Yes' or 'No' only.",
    "Number": "\nAnswer using a single number and nothing else.",
    "Number_Int": "\nAnswer using a single number and nothing else.",
}


def load_sibench(
    path: str | Path,
    media_root: str | Path | None = None,
    expected_rows: int | None = OFFICIAL_ROWS["sibench"],
    revision: str | None = None,
) -> VQABenchmark:
    """SIBench TSVs (``data/<Setting>.tsv`` or ``SIBench.tsv``); image paths relative to ``media_root``.

    Video rows (no ``image_path``) are left out and listed as a deviation; multi-view rows show
    their images side by side in one image, since the adapter protocol takes one image.
    """
    files = _resolve(path, ["data/*.tsv", "*.tsv"])
    rows, rev = _load_rows("sibench", files, expected_rows, revision)
    root = Path(media_root) if media_root is not None else files[0].parent
    items = []
    skipped = 0
    multi = 0
    for f, i, row in rows:
        where = f"{f} row {i}"
        image_path = str(row.get("image_path") or "").strip()
        if not image_path:
            skipped += 1
            continue
        sources = tuple(p.strip() for p in image_path.split(",") if p.strip())
        multi += len(sources) > 1
        qtype = str(_get(row, ["type"], where))
        if qtype not in _SIBENCH_SUFFIX:
            raise BenchmarkDataError(f"{where}: unknown question type {qtype!r}")
        prompt = str(_get(row, ["question"], where))
        if str(row.get("data_source", "")) in _SIBENCH_EXTRA_SOURCES:
            prompt += _SIBENCH_SUFFIX[qtype]
        setting = str(row.get("category") or row.get("setting") or f.stem)
        items.append(
            VQAItem(
                id=str(row.get("index", i)),
                image=ImageRef(sources, root, where),
                prompt=prompt,
                answer=str(_get(row, ["answer"], where)),
                fields={"setting": setting, "type": qtype},
            )
        )
    deviations = []
    if skipped:
        deviations.append(f"{skipped} video rows left out (needs frame input)")
    if multi:
        deviations.append(f"{multi} multi-image rows shown as one side-by-side image")

    def score(items: Sequence[VQAItem], responses: Sequence[str]) -> list[BenchmarkResult]:
        return [
            sc.score_sibench(
                [it.fields["setting"] for it in items],
                [it.fields["type"] for it in items],
                [it.answer for it in items],
                responses,
            )
        ]

    return VQABenchmark("sibench", tuple(items), tuple(files), rev, 32, score, tuple(deviations))


_POPE_SPLIT = re.compile(r"pope_(adversarial|popular|random)")


def load_pope(
    path: str | Path,
    image_root: str | Path | None = None,
    expected_rows: int | None = OFFICIAL_ROWS["pope"],
    revision: str | None = None,
) -> VQABenchmark:
    """POPE: ``coco_pope_{adversarial,popular,random}.json`` (+ COCO val2014 images) or the HF parquet."""
    files = _resolve(path, ["coco_pope_*.json", "*.parquet"])
    rows, rev = _load_rows("pope", files, expected_rows, revision)
    items = []
    for f, i, row in rows:
        where = f"{f} row {i}"
        m = _POPE_SPLIT.search(f.name)
        split = str(row.get("category") or (m.group(1) if m else "default"))
        question = str(_get(row, ["question", "text"], where))
        answer = str(_get(row, ["answer", "label"], where)).strip().lower()
        root = Path(image_root) if image_root is not None else f.parent
        items.append(
            VQAItem(
                id=str(row.get("question_id", i)),
                image=ImageRef((_get(row, ["image"], where),), root, where),
                prompt=f"{question}\nAnswer the question using a single word or phrase.",
                answer=answer,
                fields={"split": split},
            )
        )

    def score(items: Sequence[VQAItem], responses: Sequence[str]) -> list[BenchmarkResult]:
        return sc.score_pope(
            [it.fields["split"] for it in items], [it.answer for it in items], responses
        )

    return VQABenchmark("pope", tuple(items), tuple(files), rev, 16, score)


def load_hallusionbench(
    path: str | Path,
    image_root: str | Path | None = None,
    expected_rows: int | None = OFFICIAL_ROWS["hallusionbench"],
    revision: str | None = None,
) -> VQABenchmark:
    """HallusionBench ``HallusionBench.json`` (image questions, ``visual_input`` != 0) or parquet."""
    files = _resolve(path, ["HallusionBench.json", "*.parquet"])
    all_rows = [(f, i, r) for f in files for i, r in enumerate(read_table(f))]
    rows = [(f, i, r) for f, i, r in all_rows if str(r.get("visual_input", "1")) != "0"]
    check_row_count("hallusionbench (image questions)", files, len(rows), expected_rows)
    rev = check_revision(files, revision)
    items = []
    for f, i, row in rows:
        where = f"{f} row {i}"
        keys = ("category", "subcategory", "set_id", "figure_id", "question_id")
        fields = {k: str(_get(row, [k], where)) for k in keys}
        root = Path(image_root) if image_root is not None else f.parent
        items.append(
            VQAItem(
                id="_".join(fields.values()),
                image=ImageRef((_get(row, ["image", "filename"], where),), root, where),
                prompt=str(_get(row, ["question"], where)),
                answer=str(_get(row, ["gt_answer", "answer"], where)),
                fields=fields,
            )
        )

    def score(items: Sequence[VQAItem], responses: Sequence[str]) -> list[BenchmarkResult]:
        return [
            sc.score_hallusionbench(
                [it.fields["category"] for it in items],
                [it.fields["subcategory"] for it in items],
                [it.fields["set_id"] for it in items],
                [it.fields["figure_id"] for it in items],
                [it.fields["question_id"] for it in items],
                [it.answer for it in items],
                responses,
            )
        ]

    return VQABenchmark("hallusionbench", tuple(items), tuple(files), rev, 32, score)


def load_mmstar(
    path: str | Path,
    expected_rows: int | None = OFFICIAL_ROWS["mmstar"],
    revision: str | None = None,
) -> VQABenchmark:
    """MMStar parquet (``Lin-Chen/MMStar``, split val) or VLMEvalKit ``MMStar.tsv``."""
    files = _resolve(path, ["*.parquet", "MMStar.tsv", "*.tsv"])
    rows, rev = _load_rows("mmstar", files, expected_rows, revision)
    items = [
        VQAItem(
            id=str(row.get("index", i)),
            image=ImageRef((_get(row, ["image"], f"{f} row {i}"),), f.parent, f"{f} row {i}"),
            prompt=str(_get(row, ["question"], f"{f} row {i}")) + _LETTER_SUFFIX,
            answer=str(_get(row, ["answer"], f"{f} row {i}")),
            fields={"category": str(row.get("category", "all"))},
        )
        for f, i, row in rows
    ]

    def score(items: Sequence[VQAItem], responses: Sequence[str]) -> list[BenchmarkResult]:
        return [
            sc.score_mmstar(
                [it.answer for it in items], [it.fields["category"] for it in items], responses
            )
        ]

    return VQABenchmark("mmstar", tuple(items), tuple(files), rev, 16, score)


def load_realworldqa(
    path: str | Path,
    expected_rows: int | None = OFFICIAL_ROWS["realworldqa"],
    revision: str | None = None,
) -> VQABenchmark:
    """RealWorldQA parquet (``image``, ``question`` with its own instruction, ``answer``)."""
    files = _resolve(path, ["*.parquet", "*.tsv", "*.jsonl"])
    rows, rev = _load_rows("realworldqa", files, expected_rows, revision)
    items = [
        VQAItem(
            id=str(row.get("index", i)),
            image=ImageRef((_get(row, ["image"], f"{f} row {i}"),), f.parent, f"{f} row {i}"),
            prompt=str(_get(row, ["question"], f"{f} row {i}")),
            answer=str(_get(row, ["answer"], f"{f} row {i}")),
        )
        for f, i, row in rows
    ]

    def score(items: Sequence[VQAItem], responses: Sequence[str]) -> list[BenchmarkResult]:
        return [sc.score_realworldqa([it.answer for it in items], responses)]

    return VQABenchmark("realworldqa", tuple(items), tuple(files), rev, 16, score)


def load_mathvista(
    path: str | Path,
    expected_rows: int | None = OFFICIAL_ROWS["mathvista"],
    revision: str | None = None,
    extractor: sc.AnswerExtractor | None = None,
) -> VQABenchmark:
    """MathVista testmini (parquet with ``decoded_image``, or ``testmini.json`` + ``images/``)."""
    files = _resolve(path, ["testmini*.parquet", "testmini.json", "*.parquet"])
    rows, rev = _load_rows("mathvista", files, expected_rows, revision)
    items = []
    for f, i, row in rows:
        where = f"{f} row {i}"
        query = str(_get(row, ["query", "question"], where))
        answer = str(_get(row, ["answer"], where))
        fields: dict[str, Any] = {
            "answer": answer,
            "question_type": str(_get(row, ["question_type"], where)),
            "answer_type": str(_get(row, ["answer_type"], where)),
            "choices": _choices(row.get("choices")),
            "precision": row.get("precision"),
            "query": query,
        }
        items.append(
            VQAItem(
                id=str(row.get("pid", i)),
                image=ImageRef((_get(row, ["decoded_image", "image"], where),), f.parent, where),
                prompt=query,
                answer=answer,
                fields=fields,
            )
        )

    def score(items: Sequence[VQAItem], responses: Sequence[str]) -> list[BenchmarkResult]:
        return [sc.score_mathvista([it.fields for it in items], responses, extractor)]

    return VQABenchmark("mathvista", tuple(items), tuple(files), rev, 64, score)


#: Benchmark name -> loader (the CLI's ``--bench NAME=PATH``).
BENCHMARK_LOADERS: dict[str, Callable[..., VQABenchmark]] = {
    "cv-bench": load_cv_bench,
    "hallusionbench": load_hallusionbench,
    "mathvista": load_mathvista,
    "mmstar": load_mmstar,
    "mmvp": load_mmvp,
    "pope": load_pope,
    "realworldqa": load_realworldqa,
    "sibench": load_sibench,
    "vsr": load_vsr,
}
