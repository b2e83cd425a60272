"""The wheel ships every file of the package and its entry point.

A module, a Lua script or ``py.typed`` left out of the wheel passes every test run from a
checkout and breaks every install. The wheel is built here, in process, with the backend pip
uses (hatchling), so this holds on every run, not only in CI's pass against the built wheel.
"""

from __future__ import annotations

import importlib.metadata
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hatchling.builders.wheel import WheelBuilder

from bastion.check._cli import main

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    """The wheel of this tree, as ``pip wheel .`` would build it."""
    directory = tmp_path_factory.mktemp("wheel")
    (path,) = WheelBuilder(str(ROOT)).build(directory=str(directory), versions=["standard"])
    with zipfile.ZipFile(path) as built:
        yield built


def _source_files() -> set[str]:
    """Every file of the package in the source tree, as ``bastion/...`` paths."""
    return {
        path.relative_to(SRC).as_posix()
        for path in (SRC / "bastion").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def _dist_info(wheel: zipfile.ZipFile) -> str:
    (name,) = {n.split("/")[0] for n in wheel.namelist() if n.split("/")[0].endswith(".dist-info")}
    return name


def test_the_wheel_holds_every_file_under_src(wheel: zipfile.ZipFile) -> None:
    """Every file under ``src/bastion`` (modules, Lua scripts, ``py.typed``) is in the wheel,
    and the wheel holds nothing else but its metadata."""
    source = _source_files()
    dist_info = _dist_info(wheel)
    shipped = {name for name in wheel.namelist() if not name.startswith(f"{dist_info}/")}
    assert sorted(source - shipped) == []
    assert sorted(shipped - source) == []
    assert {"bastion/py.typed", "bastion/stores/lua/claim.lua"} <= shipped


def test_the_wheel_declares_the_bastion_command(wheel: zipfile.ZipFile) -> None:
    """The ``bastion`` console script is in the wheel's entry points, and the installed one
    (editable or the wheel) loads the CLI's ``main``."""
    entry_points = wheel.read(f"{_dist_info(wheel)}/entry_points.txt").decode()
    assert "bastion = bastion.check._cli:main" in entry_points.splitlines()
    (installed,) = importlib.metadata.entry_points(group="console_scripts", name="bastion")
    assert installed.load() is main


def test_the_imported_package_has_every_file_under_src() -> None:
    """The bastion under test has every file of the source tree. From a checkout that is
    ``src/bastion`` itself; in CI's pass against the wheel pip built and installed, this is
    what catches a file the real build left out."""
    import bastion

    installed = Path(bastion.__file__).resolve().parents[1]
    assert sorted(name for name in _source_files() if not (installed / name).is_file()) == []
