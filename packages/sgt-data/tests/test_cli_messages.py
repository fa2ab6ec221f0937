"""`sgt-data` reports each mistake in a line or two naming the offending file, option or store,
with a non-zero status and no traceback; a conversion with nothing committed can be restarted
with corrected inputs; Ctrl-C stops a conversion with one line and status 130."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sgt_data.cli import _parser, main
from sgt_data.convert.example import write_voc_coco
from sgt_data.store import JOURNAL_FILE


@pytest.fixture
def sigint_deliverable() -> Iterator[None]:
    """Children that can receive SIGINT: a job started in the background by a non-interactive
    shell (``cmd &``, ``nohup``) inherits SIGINT ignored, and so would every process it spawns
    (an ignored signal survives ``exec``), which makes a Ctrl-C test fail for its runner's sake."""
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    if previous is signal.SIG_IGN:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_voc_coco(tmp_path_factory.mktemp("src"), n_images=8, size=(60, 80))


def _assert_message(proc: subprocess.CompletedProcess[str], *names: str) -> None:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    for name in names:
        assert name in proc.stderr, proc.stderr


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sgt_data.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_mistyped_images_then_corrected_restarts_the_conversion(
    source: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ann, images = source
    common = ["convert", "coco", "--annotations", str(ann), "--out", "s", "--no-progress"]
    proc = _cli(*common, "--images", str(images) + "-typo", cwd=tmp_path)
    _assert_message(proc, str(images) + "-typo")
    assert (tmp_path / "s" / JOURNAL_FILE).is_file()  # a store with nothing committed
    monkeypatch.chdir(tmp_path)
    assert main([*common, "--images", str(images)]) == 0
    assert "s: 8 samples, 0 skipped" in capsys.readouterr().out


def test_other_inputs_after_commits_name_the_differing_option(
    source: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ann, images = source
    out = str(tmp_path / "s")
    args = ["convert", "coco", "--annotations", str(ann), "--out", out, "--no-progress"]
    assert main([*args, "--images", str(images), "--batch-size", "4"]) == 0
    journal = json.loads((tmp_path / "s" / JOURNAL_FILE).read_text())
    journal.update(finished=False, items_done=4, samples=4)  # as if killed after one batch
    (tmp_path / "s" / JOURNAL_FILE).write_text(json.dumps(journal))
    (tmp_path / "s" / "manifest.json").unlink()
    assert main([*args, "--images", str(images), "--batch-size", "4", "--edge"]) == 2
    err = capsys.readouterr().err
    assert "--edge/--edge-thresholds: [False, 100, 200] -> [True, 100, 200]" in err
    assert "4 samples committed" in err
    assert "--overwrite to start over" in err


def test_a_whole_file_error_names_no_item(tmp_path: Path) -> None:
    proc = _cli(
        "convert", "coco", "--annotations", "nope.json", "--images", ".", "--out", "s",
        cwd=tmp_path,
    )  # fmt: skip
    _assert_message(proc, "nope.json: cannot read")
    assert "item '-'" not in proc.stderr


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["convert", "coco", "--annotation", "a.json", "--images", ".", "--out", "s"],
         "the following arguments are required: --annotations"),
        (["preview", "store", "--out", "p.png", "--num", "0"], "--num: must be at least 1"),
        (["convert", "vqa", "--annotations", "a", "--images", ".", "--out", "s", "--edge"],
         "unrecognized arguments: --edge"),
        (["convert", "captions", "--annotations", "a", "--images", ".", "--out", "s",
          "--depth-dir", "d"], "unrecognized arguments: --depth-dir"),
    ],
)  # fmt: skip
def test_argument_mistakes_are_argument_errors(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert expected in capsys.readouterr().err


def test_every_merge_argument_has_help() -> None:
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    merge = sub.choices["merge"]
    undocumented = [
        a.dest for a in merge._actions if a.dest != "help" and not (a.help and a.help.strip())
    ]
    assert undocumented == []


_SLOW_CLI = """
import sys, time
from sgt_data.convert.coco import CocoInstancesConverter
process = CocoInstancesConverter.process
def slow(self, item):
    time.sleep(0.25)
    return process(self, item)
CocoInstancesConverter.process = slow
from sgt_data.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _slow_convert(source: tuple[Path, Path], out: Path, workers: int) -> subprocess.Popen[str]:
    ann, images = source
    args = ["convert", "coco", "--annotations", str(ann), "--images", str(images)]
    args += ["--out", str(out), "--batch-size", "2", "--workers", str(workers), "--no-progress"]
    return subprocess.Popen(
        [sys.executable, "-c", _SLOW_CLI, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(predicate: object, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while not predicate():  # type: ignore[operator]
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_a_worker_killed_by_the_os_is_a_message(source: tuple[Path, Path], tmp_path: Path) -> None:
    proc = _slow_convert(source, tmp_path / "s", workers=2)
    _wait_for(lambda: len(_children(proc.pid)) >= 2, proc)
    os.kill(_children(proc.pid)[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "Traceback" not in err, err
    assert "worker died (killed by signal 9 (SIGKILL: by the OS" in err
    assert "run the same command to resume" in err


@pytest.mark.usefixtures("sigint_deliverable")
def test_ctrl_c_stops_a_conversion_with_one_line(source: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "s"
    proc = _slow_convert(source, out, workers=1)

    def committed() -> bool:
        try:
            return json.loads((out / JOURNAL_FILE).read_text())["samples"] >= 2
        except (OSError, ValueError):
            return False

    _wait_for(committed, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()
    assert len(last) == 1, err
    assert "interrupted with " in last[0]
    assert f"samples committed to {out}; the same command resumes" in last[0]


def test_closed_pipe_ends_quietly(source: tuple[Path, Path], tmp_path: Path) -> None:
    ann, images = source
    assert main(["convert", "coco", "--annotations", str(ann), "--images", str(images),
                 "--out", str(tmp_path / "s"), "--no-progress"]) == 0  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "sgt_data.cli", "inspect", str(tmp_path / "s"), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert b"Traceback" not in err, err
    assert b"BrokenPipeError" not in err, err
