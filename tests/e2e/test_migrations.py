"""Schema migrations on SQLite and PostgreSQL: an empty database, one made by the previous
release (its real gateway, run from git), one made by the release before migrations
existed; start-up refusal, `imagerelay db upgrade|current`, replicas starting together,
and the guard that the models in schema.py and the head migration agree."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from imagerelay.storage import migrate
from tests.support.gateway import free_port, run_gateway
from tests.support.services import drop_postgres_database, fresh_postgres_database, sql_rows

REPO = Path(__file__).resolve().parents[2]
PREVIOUS_RELEASE = "8c7e7cb"  # the last release before crash recovery (no instances table)
BEFORE_MIGRATIONS = "fae98c1"  # main just before migrations: 0002's layout made by create_all
HEAD = "0006"  # the newest revision in imagerelay/storage/migrations/versions/
CALL = {"model": "gpt-image-2", "prompt": "a white mug on a gray desk"}  # default group: $0.03 a call
DEMO_CREDIT = 100_000_000


@dataclass
class Db:
    data_dir: Path
    url: str  # the database URL the gateway and the commands are given

    @property
    def env(self) -> dict[str, str]:
        return {"IMAGERELAY_DATABASE_URL": self.url, "IMAGERELAY_AUTO_MIGRATE": "false"}

    def tables(self) -> set[str]:
        return migrate._connected(self.url, lambda conn: set(sa.inspect(conn).get_table_names()))

    def scalar(self, sql: str) -> Any:
        return sql_rows(self.url, sql)[0][0]

    def execute(self, *statements: str) -> None:
        def run(conn: sa.Connection) -> None:
            for sql in statements:
                conn.execute(sa.text(sql))

        migrate._locked(self.url, run)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    data = tmp_path / "data"
    data.mkdir()
    if request.param == "sqlite":
        yield Db(data, f"sqlite:///{data / 'imagerelay.db'}")
        return
    url, name = fresh_postgres_database()
    try:
        yield Db(data, url)
    finally:
        drop_postgres_database(name)


@pytest.fixture(scope="session")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Source trees of earlier releases, from this repository's history."""
    trees: dict[str, Path] = {}
    for commit in (PREVIOUS_RELEASE, BEFORE_MIGRATIONS):
        archive = tmp_path_factory.mktemp(f"release-{commit}") / "src.tar"
        made = subprocess.run(
            ["git", "-C", str(REPO), "archive", "-o", str(archive), commit, "imagerelay"], capture_output=True
        )
        if made.returncode != 0:
            pytest.skip(f"commit {commit} is not in this clone (shallow?): cannot run the earlier release")
        with tarfile.open(archive) as tar:
            tar.extractall(archive.parent, filter="data")
        trees[commit] = archive.parent
    return trees


def cli(db: Db, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imagerelay", *args, "--data-dir", str(db.data_dir)],
        env={**os.environ, **db.env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_with_release(tree: Path, db: Db) -> dict[str, str]:
    """Run an earlier release's real gateway on the database: it creates its schema,
    the demo user and tokens, and makes one paid call. Returns the demo tokens."""
    env = {**db.env, "PYTHONPATH": str(tree)}
    if db.url.startswith("postgresql://"):
        # Those releases map postgresql:// to psycopg; name asyncpg, the one PostgreSQL
        # driver this project installs (their code passes an explicit driver through).
        env["IMAGERELAY_DATABASE_URL"] = "postgresql+asyncpg://" + db.url.split("://", 1)[1]
    with run_gateway(db.data_dir, extra_env=env, cwd=tree) as gw:
        answer = httpx.post(gw.v1 + "/images/generations", json=CALL, headers=auth(gw.tokens["default"]), timeout=60)
        assert answer.status_code == 200, answer.text
        return gw.tokens


def balance(base_v1: str, token: str) -> int:
    return int(httpx.get(base_v1 + "/account/balance", headers=auth(token)).json()["balance_micros"])


def refused_start(db: Db, extra_env: dict[str, str] | None = None) -> list[str]:
    """Start `imagerelay serve` and expect it to refuse: the lines it printed."""
    proc = subprocess.run(
        [sys.executable, "-m", "imagerelay", "serve", "--port", str(free_port()), "--data-dir", str(db.data_dir)],
        env={**os.environ, **db.env, **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]


def load_schema(tree: Path) -> sa.MetaData:
    spec = importlib.util.spec_from_file_location(f"schema_{tree.name}", tree / "imagerelay/storage/schema.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.metadata  # type: ignore[no-any-return]


def test_empty_database_upgrades_to_models(db: Db) -> None:
    """`db upgrade` on an empty database runs every migration, and the result is what
    schema.py declares: the guard that makes a column added without a migration fail."""
    current = cli(db, "db", "current")
    assert current.returncode == 1 and "empty database" in current.stdout, current
    upgraded = cli(db, "db", "upgrade")
    assert upgraded.returncode == 0 and f"revision {HEAD} (head)" in upgraded.stdout, upgraded
    assert db.scalar("SELECT version_num FROM alembic_version") == HEAD
    differences = migrate.differences(db.url)
    assert not differences, (
        "the models in imagerelay/storage/schema.py and the head migration differ: "
        f"{differences}; write a migration: `imagerelay db revision -m '...'` (docs/migrations.md)"
    )
    current = cli(db, "db", "current")
    assert current.returncode == 0 and current.stdout.strip() == f"revision {HEAD} (head)", current


def test_the_guard_sees_a_column_without_migration(db: Db) -> None:
    """The comparison above can fail: a column declared in the models only is reported."""
    migrate.upgrade(db.url)
    models = sa.MetaData()
    for table in migrate.metadata.tables.values():
        table.to_metadata(models)
    models.tables["users"].append_column(sa.Column("nickname", sa.Text, nullable=True))
    assert migrate.differences(db.url, models) == ["add_column users.nickname"]


def test_revision_0001_is_the_previous_release_schema(db: Db, releases: dict[str, Path]) -> None:
    """Revision 0001 is exactly what the previous release's create_all made, and 0002's
    downgrade returns to it."""
    previous = load_schema(releases[PREVIOUS_RELEASE])
    assert cli(db, "db", "upgrade", "--to", "0001").returncode == 0
    assert migrate.differences(db.url, previous) == []
    migrate.upgrade(db.url)
    migrate._locked(db.url, lambda conn: migrate.command.downgrade(migrate._config(conn), "0001"))
    assert migrate.differences(db.url, previous) == []
    assert "instances" not in db.tables()
    migrate.upgrade(db.url)
    assert migrate.differences(db.url) == []


def test_previous_release_database_is_refused_then_upgraded(db: Db, releases: dict[str, Path]) -> None:
    """A database made and used by the previous release: the new gateway refuses it with
    one line naming the command; `db upgrade` upgrades it; then the gateway serves the
    same users, tokens and balances, and the books balance."""
    tokens = make_with_release(releases[PREVIOUS_RELEASE], db)
    assert "users" in db.tables() and not {"instances", "alembic_version"} & db.tables()  # the old code made it

    current = cli(db, "db", "current")
    assert current.returncode == 1, current
    assert current.stdout.strip() == (
        f"revision 0001 (made before migrations; not yet stamped); head is {HEAD}: run `imagerelay db upgrade`"
    )
    lines = refused_start(db)
    assert len(lines) == 1 and "imagerelay db upgrade" in lines[0] and "0001" in lines[0], lines

    upgraded = cli(db, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded
    assert upgraded.stdout.strip() == f"upgraded from 0001 to revision {HEAD} (head)"
    assert migrate.differences(db.url) == []

    with run_gateway(db.data_dir, extra_env=db.env) as gw:
        assert gw.tokens == tokens  # the same demo tokens authenticate
        assert balance(gw.v1, tokens["default"]) == DEMO_CREDIT - 30_000
        answer = httpx.post(gw.v1 + "/images/generations", json=CALL, headers=auth(tokens["default"]), timeout=60)
        assert answer.status_code == 200, answer.text
        assert balance(gw.v1, tokens["default"]) == DEMO_CREDIT - 60_000
    audit = cli(db, "audit")
    assert audit.returncode == 0, audit.stdout + audit.stderr


def test_database_made_before_migrations_is_recognised_as_0002(db: Db, releases: dict[str, Path]) -> None:
    """A database the release just before migrations made has 0002's layout: it is
    recognised as 0002 (never guessed at), refused as behind, and upgraded in place."""
    tokens = make_with_release(releases[BEFORE_MIGRATIONS], db)
    assert "instances" in db.tables() and "alembic_version" not in db.tables()
    current = cli(db, "db", "current")
    assert current.returncode == 1, current
    assert current.stdout.strip() == (
        f"revision 0002 (made before migrations; not yet stamped); head is {HEAD}: run `imagerelay db upgrade`"
    )
    lines = refused_start(db)
    assert len(lines) == 1 and "imagerelay db upgrade" in lines[0] and "0002" in lines[0], lines
    upgraded = cli(db, "db", "upgrade")
    assert upgraded.returncode == 0 and upgraded.stdout.strip() == f"upgraded from 0002 to revision {HEAD} (head)"
    with run_gateway(db.data_dir, extra_env=db.env) as gw:
        assert gw.tokens == tokens
        assert balance(gw.v1, tokens["default"]) == DEMO_CREDIT - 30_000
    assert db.scalar("SELECT version_num FROM alembic_version") == HEAD
    assert migrate.differences(db.url) == []


def test_auto_migrate_upgrades_at_start(db: Db) -> None:
    assert cli(db, "db", "upgrade", "--to", "0001").returncode == 0
    assert "0001" in refused_start(db)[0]
    with run_gateway(db.data_dir, extra_env={**db.env, "IMAGERELAY_AUTO_MIGRATE": "true"}) as gw:
        assert balance(gw.v1, gw.tokens["default"]) == DEMO_CREDIT
        assert f"upgraded the database schema from 0001 to {HEAD}" in gw.log_text()
    assert db.scalar("SELECT version_num FROM alembic_version") == HEAD


def test_replicas_starting_together_on_an_empty_database(db: Db) -> None:
    """Three gateway processes started at once on one empty database: one creates the
    schema under the migration lock, the others wait for it and start."""
    procs: list[tuple[subprocess.Popen[bytes], int, Path]] = []
    with ExitStack() as stack:
        for i in range(3):
            port, data = free_port(), db.data_dir / f"replica-{i}"
            data.mkdir()
            log = stack.enter_context(open(data / "gateway.log", "wb"))
            proc = subprocess.Popen(
                [sys.executable, "-m", "imagerelay", "serve", "--port", str(port), "--data-dir", str(data)],
                env={**os.environ, **db.env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            stack.callback(proc.wait, 10)
            stack.callback(proc.terminate)
            procs.append((proc, port, data))
        deadline = time.monotonic() + 60
        for proc, port, data in procs:
            while True:
                assert proc.poll() is None, (data / "gateway.log").read_text()
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, (data / "gateway.log").read_text()
                time.sleep(0.1)
    assert db.scalar("SELECT count(*) FROM alembic_version") == 1
    assert migrate.differences(db.url) == []
    logs = [(data / "gateway.log").read_text() for _proc, _port, data in procs]
    assert sum(f"created the database schema at revision {HEAD}" in log for log in logs) == 1, logs


def test_database_of_a_newer_release_is_refused(db: Db) -> None:
    migrate.upgrade(db.url)
    db.execute("UPDATE alembic_version SET version_num = '0099'")
    current = cli(db, "db", "current")
    assert current.returncode == 1 and "0099, which this release does not know" in current.stdout, current
    lines = refused_start(db)
    assert len(lines) == 1 and "0099" in lines[0] and "newer release" in lines[0], lines
    upgraded = cli(db, "db", "upgrade")
    assert upgraded.returncode == 2 and "cannot upgrade" in upgraded.stderr, upgraded


def test_unrecognised_layout_is_refused_with_what_is_missing(db: Db) -> None:
    """Tables without a revision whose layout no release made (here: half of 0002) are
    never stamped and altered on a guess."""
    migrate.upgrade(db.url, "0001")
    db.execute(
        "DROP TABLE alembic_version",
        "CREATE TABLE instances (id VARCHAR(64) PRIMARY KEY, host VARCHAR(255) NOT NULL, pid INTEGER NOT NULL, "
        "started_at FLOAT NOT NULL, expires_at FLOAT NOT NULL)",
    )
    for args in (("db", "current"), ("db", "upgrade")):
        proc = cli(db, *args)
        assert proc.returncode == 2, proc
        assert "missing holds.call_info, holds.instance_id, idempotency.instance_id" in proc.stderr, proc.stderr
    assert "missing holds.call_info" in refused_start(db)[0]


def test_unreachable_database_is_one_line(tmp_path: Path) -> None:
    db = Db(tmp_path, f"postgresql://nobody@127.0.0.1:{free_port()}/none")
    for args in (("db", "current"), ("db", "upgrade")):
        proc = cli(db, *args)
        assert proc.returncode == 2, proc
        assert proc.stderr.startswith("error: database error: ") and len(proc.stderr.strip().splitlines()) == 1, (
            proc.stderr
        )
