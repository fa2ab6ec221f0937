"""Every developer action of the SGT monorepo.

    nox -s test        each package in its own environment (only its declared dependencies),
                       a dependency-consistency check, then the cross-package integration tests
    nox -s lint        ruff check + ruff format --check
    nox -s typecheck   mypy --strict over the four packages
    nox -s build       four wheels into dist/, then a fresh venv installs sgt-train from them
    nox -s bench       the benchmarks of every package (ratios against references, same process)
    nox -s fuzz        the full-length fuzz tests
    nox -s demo        the end-to-end CPU demo
    nox -s demo-base   rebuild the demo's shipped base model (the sgt-mini sweep's seed-0 base)

Disk: a test session's environment (torch, transformers, diffusers, DeepSpeed, Ray...) takes
about 2 GB, and ``nox -s test`` makes six. Each is removed when its session ends, so that one at a
time is on disk; pass ``-r``/``-R`` (reuse) or set ``SGT_KEEP_VENVS=1`` to keep them.

Torch: CI and this machine use the CPU build (``torch==2.13.0`` from the local wheel folder).
Set ``SGT_TORCH_SPEC`` to choose another build (e.g. ``SGT_TORCH_SPEC="torch"`` on a GPU host to
take the default CUDA wheel); set it to the empty string to keep whatever the environment resolves.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import nox

ROOT = Path(__file__).parent
PYTHON = "3.11"
TORCH_SPEC = os.environ.get("SGT_TORCH_SPEC", "torch==2.13.0")

#: distribution -> (import name, sibling distributions it depends on)
PACKAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "sgt-data": ("sgt_data", ()),
    "sgt-models": ("sgt_models", ("sgt-data",)),
    "sgt-eval": ("sgt_eval", ("sgt-data", "sgt-models")),
    "sgt-train": ("sgt_train", ("sgt-data", "sgt-models", "sgt-eval")),
}

#: optional extras installed for the type checker (lmms-eval and depth models are too heavy)
TYPECHECK_EXTRAS = {"sgt-data": "[edge,loader]", "sgt-eval": "[parquet,plots]"}

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["test", "lint", "typecheck"]
nox.options.error_on_missing_interpreters = True

ENV = {
    "NUMBA_CACHE_DIR": str(ROOT / ".cache" / "numba"),
    "TORCH_EXTENSIONS_DIR": str(ROOT / ".cache" / "torch_extensions"),
    "DS_ACCELERATOR": "cpu",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONHASHSEED": "0",
}


def _keep_venvs() -> bool:
    """Whether the session environments outlive their sessions: asked for by reusing them
    (``-r``, ``-R``, ``--reuse-existing-virtualenvs``, ``--reuse-venv=yes|always``,
    ``--no-install``) or by ``SGT_KEEP_VENVS=1``."""
    if os.environ.get("SGT_KEEP_VENVS", "") not in ("", "0"):
        return True
    flags = {"-r", "-R", "--reuse-existing-virtualenvs", "--no-install"}
    for arg in sys.argv[1:]:
        if arg in flags or (arg.startswith("--reuse-venv") and not arg.endswith(("=no", "=never"))):
            return True
    return False


def _removes_its_venv(
    func: Callable[..., None],
) -> Callable[..., None]:
    """Remove the session's environment when the session ends (passed or failed), unless
    :func:`_keep_venvs`: six test environments of ~2 GB each must not pile up on a CI disk."""

    @functools.wraps(func)
    def wrapper(session: nox.Session, **kwargs: str) -> None:
        try:
            func(session, **kwargs)
        finally:
            location = getattr(session.virtualenv, "location", None)
            if location and not _keep_venvs() and Path(location).is_dir():
                shutil.rmtree(location, ignore_errors=True)
                session.log(f"removed {location} (set SGT_KEEP_VENVS=1 or pass -r to keep it)")

    return wrapper


def _pkg(dist: str) -> str:
    return str(ROOT / "packages" / dist)


def _install_torch(session: nox.Session) -> None:
    if TORCH_SPEC:
        session.install(TORCH_SPEC)


def _install_packages(
    session: nox.Session, dists: list[str], test_groups_of: tuple[str, ...] = ()
) -> None:
    """Install distributions (non-editable: tests run against what a wheel would ship), plus the
    ``test`` dependency group of the distributions named in ``test_groups_of``."""
    requirements: list[str] = []
    for dist in test_groups_of:
        pyproject = nox.project.load_toml(Path(_pkg(dist)) / "pyproject.toml")
        requirements += nox.project.dependency_groups(pyproject, "test")
    session.install(*[_pkg(d) for d in dists], *requirements)


def _closure(dist: str) -> list[str]:
    return [*PACKAGES[dist][1], dist]


@nox.session(python=PYTHON)
@nox.parametrize("package", [*PACKAGES, "integration"])
@_removes_its_venv
def test(session: nox.Session, package: str) -> None:
    """Test one package in an environment holding only its declared dependencies (and test group)."""
    session.env.update(ENV)
    _install_torch(session)
    if package == "integration":
        _install_packages(session, list(PACKAGES), test_groups_of=tuple(PACKAGES))
        session.run("python", "-m", "pip", "check")
        session.run("pytest", str(ROOT / "tests" / "integration"), *session.posargs)
        return
    _install_packages(session, _closure(package), test_groups_of=(package,))
    session.run("python", "-m", "pip", "check")
    session.env["SGT_ISOLATED_PACKAGE"] = package
    session.run(
        "pytest", str(Path(_pkg(package)) / "tests"), "-m", "not fuzz_full", *session.posargs
    )
    if package == "sgt-eval":
        session.notify("test_lmms_eval")


@nox.session(python=PYTHON)
@_removes_its_venv
def test_lmms_eval(session: nox.Session) -> None:
    """sgt-eval's lmms-eval plugin against the real lmms-eval 0.7.3 (run by ``nox -s test``)."""
    session.env.update(ENV)
    _install_torch(session)
    session.install(
        _pkg("sgt-data"),
        _pkg("sgt-models"),
        f"{_pkg('sgt-eval')}[parquet,plots,lmms-eval]",
        "lmms_eval==0.7.3",
        # lmms-eval needs torchvision; pinning the one made for torch 2.13 keeps pip from
        # replacing the installed torch with a newer release
        "torchvision==0.28.0",
        "pytest>=8",
    )
    if TORCH_SPEC == "torch==2.13.0":
        # PyPI's torchvision is a CUDA build that cannot load beside the CPU torch; the plugin
        # path never imports it
        session.run("python", "-m", "pip", "uninstall", "-y", "torchvision")
    session.env["SGT_REQUIRE_LMMS_EVAL"] = "1"
    tests = ROOT / "packages" / "sgt-eval" / "tests"
    names = ("test_lmms_eval_real.py", "test_lmms_plugin.py", "test_parsing.py")
    session.run("pytest", "-q", *(str(tests / n) for n in names), *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Ruff lint and format check."""
    session.install(*nox.project.dependency_groups(nox.project.load_toml("pyproject.toml"), "lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over every package's sources."""
    session.env.update(ENV)
    _install_torch(session)
    # with the optional extras a user may install, so that every import is checked typed
    session.install(*[_pkg(d) + TYPECHECK_EXTRAS.get(d, "") for d in PACKAGES])
    session.install(
        *nox.project.dependency_groups(nox.project.load_toml("pyproject.toml"), "typecheck")
    )
    session.run("mypy", *[str(Path(_pkg(d)) / "src" / PACKAGES[d][0]) for d in PACKAGES])


@nox.session(python=PYTHON)
def build(session: nox.Session) -> None:
    """Build the four wheels into dist/, then install sgt-train from them in a fresh venv."""
    session.install(
        *nox.project.dependency_groups(nox.project.load_toml("pyproject.toml"), "build")
    )
    dist_dir = ROOT / "dist"
    shutil.rmtree(dist_dir, ignore_errors=True)
    for dist in PACKAGES:
        session.run("python", "-m", "build", "--wheel", "--outdir", str(dist_dir), _pkg(dist))
    with tempfile.TemporaryDirectory(prefix="sgt-build-check-") as tmp:
        venv = Path(tmp) / "venv"
        session.run(sys.executable, "-m", "venv", str(venv), external=True)
        py = str(venv / "bin" / "python")
        if TORCH_SPEC:
            session.run(py, "-m", "pip", "install", "-q", TORCH_SPEC, external=True)
        session.run(
            py,
            "-m",
            "pip",
            "install",
            "-q",
            "--find-links",
            str(dist_dir),
            "sgt-train",
            external=True,
        )
        session.run(py, "-m", "pip", "check", external=True)
        session.run(
            py,
            "-c",
            "import importlib.metadata as m; "
            "print({d: m.version(d) for d in ('sgt-data', 'sgt-models', 'sgt-train')})",
            external=True,
        )
        session.run(str(venv / "bin" / "sgt-train"), "--help", external=True)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Run every package's benchmarks (``packages/*/bench/bench_*.py``); each prints its table."""
    session.env.update(ENV)
    _install_torch(session)
    _install_packages(session, list(PACKAGES), test_groups_of=tuple(PACKAGES))
    scripts = sorted(ROOT.glob("packages/*/bench/bench_*.py"))
    if session.posargs:
        scripts = [s for s in scripts if any(k in s.name for k in session.posargs)]
    if not scripts:
        session.error("no benchmark scripts found")
    for script in scripts:
        session.run("python", str(script))


@nox.session(python=PYTHON)
def fuzz(session: nox.Session) -> None:
    """Full-length fuzz tests (the default test run keeps them short)."""
    session.env.update(ENV)
    session.env["SGT_FUZZ_FULL"] = "1"
    _install_torch(session)
    _install_packages(session, ["sgt-data"], test_groups_of=("sgt-data",))
    session.run(
        "pytest", str(Path(_pkg("sgt-data")) / "tests"), "-m", "fuzz_full", *session.posargs
    )


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """The end-to-end CPU demo (scene world -> store -> training -> evaluation -> report).

    Writes ``sgt-demo/report/``; extra arguments go to ``sgt-train demo`` (``-- --size tiny``).
    """
    session.env.update(ENV)
    _install_torch(session)
    _install_packages(session, list(PACKAGES))
    session.run("sgt-train", "demo", "--out", str(ROOT / "sgt-demo"), *session.posargs)


@nox.session(name="demo-base", python=PYTHON)
def demo_base(session: nox.Session) -> None:
    """Rebuild the demo's shipped base model and its PROVENANCE.json (about 15 minutes on 2 cores).

    Trains the ``sgt-mini`` sweep's world, vision encoder and seed-0 base into
    ``.cache/demo-base`` (reused when present) and writes it in bfloat16 to
    ``packages/sgt-train/src/sgt_train/demo/base/``; ``tests/test_demo_base.py`` checks the result.
    """
    session.env.update(ENV)
    _install_torch(session)
    _install_packages(session, list(PACKAGES))
    session.run(
        "python", "-m", "sgt_train.demo.base", "--work", str(ROOT / ".cache" / "demo-base"),
        "--out", _pkg("sgt-train") + "/src/sgt_train/demo/base", *session.posargs,
    )  # fmt: skip
