"""Loaders read each published format, check row counts and revisions, and name the file."""

import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sgt_eval.benchmarks.generation import load_gedit, load_geneval_prompts
from sgt_eval.benchmarks.tables import (
    BenchmarkDataError,
    MissingExtraError,
    RevisionMismatchError,
    RowCountError,
    data_revision,
    read_table,
)
from sgt_eval.benchmarks.understanding import (
    BENCHMARK_LOADERS,
    load_cv_bench,
    load_hallusionbench,
    load_mmvp,
)
from sgt_eval_shapeworld import png, scene, write_benchmark_files

SIZES = {
    "cv-bench": 6,
    "mmvp": 4,
    "vsr": 4,
    "sibench": 4,
    "pope": 4,
    "hallusionbench": 4,
    "mmstar": 2,
    "realworldqa": 2,
    "mathvista": 2,
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    return write_benchmark_files(tmp_path_factory.mktemp("bench"))


@pytest.mark.parametrize("name", sorted(SIZES))
def test_each_format_loads_with_images(name: str, files: dict[str, dict[str, object]]) -> None:
    bench = BENCHMARK_LOADERS[name](expected_rows=SIZES[name], **files[name])
    expected_items = SIZES[name] - (1 if name == "sibench" else 0)  # the video row
    assert len(bench.items) == expected_items
    image = bench.items[0].image.load()
    assert image.dtype.name == "uint8"
    assert image.ndim == 3
    assert image.shape[2] == 3
    assert bench.revision.startswith("sha256:")


@pytest.mark.parametrize("name", sorted(SIZES))
def test_row_count_mismatch_names_the_file(name: str, files: dict[str, dict[str, object]]) -> None:
    with pytest.raises(RowCountError, match=rf"holds {SIZES[name]} rows, expected 999") as err:
        BENCHMARK_LOADERS[name](expected_rows=999, **files[name])
    assert str(Path(str(files[name]["path"])).name) in str(err.value)


def test_published_sizes_are_the_defaults(files: dict[str, dict[str, object]]) -> None:
    with pytest.raises(RowCountError, match="expected 2638"):
        load_cv_bench(**files["cv-bench"])  # type: ignore[arg-type]
    with pytest.raises(RowCountError, match="expected 951"):
        load_hallusionbench(**files["hallusionbench"])  # type: ignore[arg-type]


def test_revision_pin(files: dict[str, dict[str, object]], tmp_path: Path) -> None:
    bench = load_mmvp(expected_rows=4, **files["mmvp"])  # type: ignore[arg-type]
    again = load_mmvp(expected_rows=4, revision=bench.revision, **files["mmvp"])  # type: ignore[arg-type]
    assert again.revision == bench.revision
    with pytest.raises(
        RevisionMismatchError, match=r"Questions.csv: revision sha256:\w+, expected sha256:0"
    ):
        load_mmvp(expected_rows=4, revision="sha256:0", **files["mmvp"])  # type: ignore[arg-type]
    sha = "0123456789abcdef0123456789abcdef01234567"
    snap = tmp_path / "datasets--x" / "snapshots" / sha
    snap.mkdir(parents=True)
    (snap / "t.jsonl").write_text("{}\n")
    assert data_revision([snap / "t.jsonl"]) == sha


def test_cv_bench_jsonl_layout(tmp_path: Path) -> None:
    (tmp_path / "img" / "2D").mkdir(parents=True)
    (tmp_path / "img" / "2D" / "a.png").write_bytes(png(scene([("circle", "red")])))
    row = {
        "idx": 0,
        "type": "2D",
        "source": "COCO",
        "filename": "img/2D/a.png",
        "prompt": "How many circles?\n(A) 1 (B) 2",
        "answer": "(A)",
    }
    (tmp_path / "test_2d.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "test_3d.jsonl").write_text(
        json.dumps({**row, "idx": 1, "source": "Omni3D"}) + "\n"
    )
    bench = load_cv_bench(tmp_path, expected_rows=2)
    assert [it.fields["source"] for it in bench.items] == ["COCO", "Omni3D"]
    assert bench.items[1].image.load().shape == (96, 96, 3)


def test_bad_rows_name_file_and_row(tmp_path: Path) -> None:
    (tmp_path / "Questions.csv").write_text(
        "Index,Question,Options,Correct Answer\n1,Q,red or blue,(a)\n"
    )
    with pytest.raises(BenchmarkDataError, match=r"Questions.csv row 0: options 'red or blue'"):
        load_mmvp(tmp_path, expected_rows=1)
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"a": 1}\n{oops\n')
    with pytest.raises(BenchmarkDataError, match=r"x.jsonl:2: not JSON"):
        read_table(bad)
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "test.jsonl").write_text(
        '{"image": "missing.png", "caption": "c", "label": 1}\n'
    )
    bench = BENCHMARK_LOADERS["vsr"](tmp_path / "v", image_root=tmp_path, expected_rows=1)
    with pytest.raises(
        BenchmarkDataError, match=r"test.jsonl row 0: image 'missing.png' not found"
    ):
        bench.items[0].image.load()
    (tmp_path / "t.xlsx").write_text("")
    with pytest.raises(BenchmarkDataError, match=r"unknown table format '\.xlsx'"):
        read_table(tmp_path / "t.xlsx")


def test_parquet_without_pyarrow_names_the_extra(
    files: dict[str, dict[str, object]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(MissingExtraError, match=r"sgt-eval\[parquet\]"):
        load_cv_bench(expected_rows=None, **files["cv-bench"])  # type: ignore[arg-type]


def test_gedit_and_geneval_files(tmp_path: Path) -> None:
    img = {"bytes": png(scene([("square", "blue")])), "path": None}
    pq.write_table(
        pa.table(
            {
                "task_type": ["color_alter", "color_alter", "style_change"],
                "key": ["a", "b", "c"],
                "instruction": ["make it red", "把它变红", "cartoon"],
                "instruction_language": ["en", "cn", "en"],
                "input_image": [img, img, img],
            }
        ),
        tmp_path / "train-0.parquet",
    )
    items, rev = load_gedit(tmp_path, expected_rows=2)
    assert [i.sample.key for i in items] == ["a", "c"]
    assert rev.startswith("sha256:")
    with pytest.raises(RowCountError, match=r"gedit-bench \(en\).*holds 2 rows, expected 606"):
        load_gedit(tmp_path)
    meta = tmp_path / "evaluation_metadata_long.jsonl"
    meta.write_text(
        json.dumps(
            {
                "tag": "single_object",
                "prompt": "a long prompt",
                "include": [{"class": "bench", "count": 1}],
            }
        )
        + "\n"
    )
    prompts, _ = load_geneval_prompts(meta, expected_rows=1)
    assert prompts[0].include == ({"class": "bench", "count": 1},)
