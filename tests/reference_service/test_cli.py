"""``bastion-service``: migrate, serve's migration policy, worker refusing embedded mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from reference_service import cli


def test_worker_refuses_embedded_mode(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One line on stderr saying why, and a non-zero exit."""
    monkeypatch.delenv("BASTION_SERVICE_MODE", raising=False)
    assert cli.main(["worker"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "embedded mode" in err


def test_migrate_then_serve_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`serve --no-migrate` refuses an empty database in one line; `migrate` fixes it."""
    monkeypatch.setenv("BASTION_SERVICE_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/s.db")
    served: list[object] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: served.append(app))
    assert cli.main(["serve", "--no-migrate"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "bastion-service: the database is not migrated: run `bastion-service migrate` first"
    )
    assert not served
    assert cli.main(["migrate"]) == 0
    assert cli.main(["serve", "--no-migrate"]) == 0
    assert len(served) == 1


def test_serve_migrates_an_embedded_sqlite_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh checkout's `serve` creates and migrates its SQLite file itself."""
    monkeypatch.setenv("BASTION_SERVICE_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/new.db")
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: None)
    assert cli.main(["serve"]) == 0
    assert (tmp_path / "new.db").exists()


def test_bad_settings_are_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Real mode without secrets of its own refuses to start, naming the variables."""
    monkeypatch.setenv("BASTION_SERVICE_MODE", "real")
    monkeypatch.delenv("BASTION_SERVICE_ADMIN_TOKEN", raising=False)
    assert cli.main(["worker"]) == 2
    assert "BASTION_SERVICE_ADMIN_TOKEN" in capsys.readouterr().err
