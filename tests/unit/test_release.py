"""Release hygiene: one version (pyproject.toml), a buildable sdist + wheel whose
installed CLI reports it, and ci/check-changelog.sh.

The build test is marked slow. It builds offline (--no-isolation) when this
interpreter already has the build backend pyproject.toml asks for, and otherwise lets
`python -m build` fetch it from PyPI. It builds from a copy of the tree, so the
checkout gets no build/ or egg-info litter.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import venv
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "ci" / "check-changelog.sh"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]

# not part of a source distribution; never copied into the build tree
_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "venv", "__pycache__", "*.pyc", "*.egg-info", "build", "dist",
    ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis", "result", "result-*",
    ".wheelhouse", "wheelhouse", ".build", "node_modules",
)  # fmt: skip


# --------------------------------------------------------------------------- version


def test_version_is_single_sourced() -> None:
    """pyproject.toml holds the version; the package reads it from its metadata."""
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?(a|b|rc|dev|post)\d+)?", VERSION), VERSION
    init = (REPO / "secretivex" / "__init__.py").read_text()
    assert 'version("secretivex")' in init
    literal = re.compile(r"""__version__\s*=\s*["'](?!0\.0\.0)\d""")  # 0.0.0+unknown: no metadata
    offenders = [
        str(p.relative_to(REPO))
        for p in (REPO / "secretivex").rglob("*.py")
        if literal.search(p.read_text(errors="replace"))
    ]
    assert offenders == [], f"hard-coded __version__ in {offenders}"


def test_installed_metadata_matches_pyproject() -> None:
    import secretivex

    assert metadata.version("secretivex") == VERSION, "reinstall: pip install -e ."
    assert secretivex.__version__ == VERSION


# --------------------------------------------------------------------------- build


def _backend_available() -> bool:
    """True when every build-system requirement is installed here (build offline)."""
    from packaging.requirements import Requirement

    for spec in PYPROJECT["build-system"]["requires"]:
        req = Requirement(spec)
        try:
            have = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            return False
        if not req.specifier.contains(have, prereleases=True):
            return False
    return True


@pytest.mark.slow
def test_build_sdist_and_wheel_then_install_and_run(tmp_path: Path) -> None:
    pytest.importorskip("build", reason="the `build` package is in the test extra")
    readme = PYPROJECT["project"].get("readme")
    if isinstance(readme, str) and not (REPO / readme).exists():
        pytest.fail(f"pyproject.toml names {readme} as the readme, but it does not exist")

    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=_IGNORE, symlinks=True)
    dist = tmp_path / "dist"
    cmd = [sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(dist), str(src)]
    if _backend_available():
        cmd.insert(3, "--no-isolation")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    sdists = list(dist.glob("*.tar.gz"))
    wheels = list(dist.glob("*.whl"))
    assert [p.name for p in sdists] == [f"secretivex-{VERSION}.tar.gz"]
    assert [p.name for p in wheels] == [f"secretivex-{VERSION}-py3-none-any.whl"]

    with tarfile.open(sdists[0]) as tar:
        names = set(tar.getnames())
    root = f"secretivex-{VERSION}"
    for member in ["pyproject.toml", "PKG-INFO", "secretivex/__init__.py"]:
        assert f"{root}/{member}" in names, member

    with zipfile.ZipFile(wheels[0]) as whl:
        files = set(whl.namelist())
        meta = whl.read(f"secretivex-{VERSION}.dist-info/METADATA").decode()
        entry_points = whl.read(f"secretivex-{VERSION}.dist-info/entry_points.txt").decode()
    for member in [
        "secretivex/__init__.py",
        "secretivex/py.typed",
        "secretivex/agent/systemd.py",
        "secretivex/config/secretivex.schema.json",  # for editors: config schema --path
        "secretivex/units/secretivex.service",  # for install-units --user
        "secretivex/units/secretivex.socket",
    ]:
        assert member in files, member
    assert not any(name.startswith(("tests/", "nixos-module/")) for name in files)
    assert f"Version: {VERSION}" in meta
    assert "secretivex = secretivex.cli.main:main" in entry_points

    # A fresh venv with only the wheel installed (no network); its dependencies are
    # borrowed from this interpreter's site-packages through a .pth file, which adds
    # the directory but not its own .pth files, so an editable install there is inert.
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, symlinks=True).create(env_dir)
    py = env_dir / "bin" / "python"
    pip = subprocess.run(
        [str(py), "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", str(wheels[0])],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pip.returncode == 0, pip.stderr
    new_site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(new_site) / "zz-borrowed-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    clean_env["PATH"] = f"{env_dir / 'bin'}:{clean_env.get('PATH', '')}"
    run = subprocess.run(
        [str(env_dir / "bin" / "secretivex"), "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"secretivex {VERSION}"
    where = subprocess.run(
        [str(py), "-c", "import secretivex; print(secretivex.__file__)"],
        capture_output=True,
        text=True,
        env=clean_env,
        cwd=tmp_path,
        check=True,
    ).stdout.strip()
    assert where.startswith(new_site), f"imported {where}, not the wheel in {new_site}"


# --------------------------------------------------------------------------- changelog

GOOD = """# Changelog

All notable changes to this project are documented in this file.
The format is based on Keep a Changelog, and this project adheres to Semantic Versioning.

## [Unreleased]

### Added
- Something new.

## [{version}] - 2025-03-01

### Added
- The first release.

## [0.0.9] - 2025-01-01

### Fixed
- An older fix.

[Unreleased]: https://example.invalid/compare/v{version}...HEAD
[{version}]: https://example.invalid/releases/tag/v{version}
"""


def check(
    tmp_path: Path, changelog: str | None, *args: str, version: str = VERSION
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "CHANGELOG.md"
    if changelog is not None:
        path.write_text(changelog)
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(f'[project]\nname = "secretivex"\nversion = "{version}"\n')
    env = {**os.environ, "CHANGELOG_FILE": str(path), "PYPROJECT_FILE": str(pyproject)}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=30, env=env
    )


def test_changelog_unreleased_ok(tmp_path: Path) -> None:
    proc = check(tmp_path, GOOD.format(version="0.1.0"))
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout


def test_changelog_release_tag_ok(tmp_path: Path) -> None:
    proc = check(tmp_path, GOOD.format(version="0.1.0"), "v0.1.0", version="0.1.0")
    assert proc.returncode == 0, proc.stderr
    assert "[0.1.0]" in proc.stdout


@pytest.mark.parametrize(
    ("changelog", "tag", "version", "needle", "code"),
    [
        (GOOD.format(version="0.1.0"), "v0.2.0", "0.2.0", "no '## [0.2.0]' section", 1),
        (GOOD.format(version="0.1.0"), "v0.1.0", "0.1.1", 'says version "0.1.1"', 1),
        (
            GOOD.format(version="0.1.0").replace("## [Unreleased]", "## Unreleased"),
            "",
            "0.1.0",
            "no '## [Unreleased]' section",
            1,
        ),
        (
            GOOD.format(version="0.1.0").replace("[0.1.0] - 2025-03-01", "[0.1.0]"),
            "v0.1.0",
            "0.1.0",
            "YYYY-MM-DD",
            1,
        ),
        (
            GOOD.format(version="0.1.0").replace("- The first release.", ""),
            "v0.1.0",
            "0.1.0",
            "lists no changes",
            1,
        ),
        (GOOD.format(version="0.1.0"), "0.1.0", "0.1.0", "not a release tag", 2),
        (GOOD.format(version="0.1.0"), "v1.2", "0.1.0", "not a release tag", 2),
        # a dot in the version is literal: [0x1x0] must not satisfy v0.1.0
        (
            GOOD.format(version="0.1.0").replace("[0.1.0] -", "[0x1x0] -"),
            "v0.1.0",
            "0.1.0",
            "no '## [0.1.0]' section",
            1,
        ),
    ],
)
def test_changelog_rejects(
    tmp_path: Path, changelog: str, tag: str, version: str, needle: str, code: int
) -> None:
    args = (tag,) if tag else ()
    proc = check(tmp_path, changelog, *args, version=version)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert needle in proc.stderr, proc.stderr


def test_changelog_missing_file(tmp_path: Path) -> None:
    proc = check(tmp_path, None)
    assert proc.returncode == 1
    assert "not found" in proc.stderr


def test_prerelease_tag(tmp_path: Path) -> None:
    text = GOOD.format(version="1.0.0-rc.1")
    proc = check(tmp_path, text, "v1.0.0-rc.1", version="1.0.0-rc.1")
    assert proc.returncode == 0, proc.stderr


def test_repository_changelog_has_unreleased() -> None:
    if not (REPO / "CHANGELOG.md").exists():
        pytest.skip("CHANGELOG.md is not in the tree yet")
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def test_script_is_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        if os.environ.get("SECRETIVEX_REQUIRE_ALL") == "1":
            pytest.fail("SECRETIVEX_REQUIRE_ALL=1 but shellcheck is not installed")
        pytest.skip("shellcheck is not installed (Debian: apt-get install shellcheck)")
    proc = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
