"""PostgreSQL connections of the store: reads run outside a transaction (no BEGIN and ROLLBACK round trips), and a
pooled connection the server closed while it sat idle (a restart, an idle timeout, an administrator) is replaced
without anyone seeing an error, although connections in steady use are not tested before each read."""

from __future__ import annotations

import time
import uuid

import pytest
import sqlalchemy as sa

from joinedup.store import engine as store_engine
from joinedup.store.repository import Store
from tests.conftest import PG_URL, drop_database, fresh_database

pytestmark = pytest.mark.skipif(not PG_URL, reason="needs JOINEDUP_TEST_DATABASE_URL (PostgreSQL)")


@pytest.fixture()
def store(tmp_path):
    url = fresh_database("postgresql", tmp_path, f"conns_{uuid.uuid4().hex[:6]}")  # migrations run once per URL
    engine = store_engine.make_engine(url)
    store_engine.migrate(engine)
    engine.dispose()
    s = Store(url)
    yield s
    s.engine.dispose()
    drop_database(url)


def _admin(url: str):
    base = sa.engine.make_url(url)
    return sa.create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT"), base.database


def _states(url: str) -> list[str]:
    """The state of every session on the database ('active', 'idle', 'idle in transaction', ...)."""
    admin, name = _admin(url)
    with admin.connect() as conn:
        states = list(conn.execute(sa.text("SELECT state FROM pg_stat_activity WHERE datname = :d"),
                                   {"d": name}).scalars())
    admin.dispose()
    return states


def test_a_read_leaves_no_transaction_open(store):
    with store.reading() as conn:
        assert conn.exec_driver_sql("SELECT 1").scalar() == 1
        states = _states(store.url)
        assert "idle in transaction" not in states, states  # autocommit: the statement ended, nothing is held
    assert store.point(store._sql_read, ("Patient", "nobody")) is None


def test_connections_closed_by_the_server_while_idle_are_replaced(store):
    assert store.point(store._sql_read, ("Patient", "nobody")) is None
    with store.reading() as a, store.reading() as b:  # two pooled connections, both back in the pool after
        a.exec_driver_sql("SELECT 1")
        b.exec_driver_sql("SELECT 1")
    admin, name = _admin(store.url)
    with admin.connect() as conn:
        killed = conn.execute(sa.text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                      "WHERE datname = :d AND pid <> pg_backend_pid()"), {"d": name}).scalar()
    admin.dispose()
    assert killed >= 2
    time.sleep(store_engine.PG_PING_AFTER_IDLE_S + 0.5)
    for _ in range(3):  # every pooled connection was closed: each read gets a working one
        assert store.point(store._sql_read, ("Patient", "nobody")) is None
        with store.reading() as conn:
            assert conn.exec_driver_sql("SELECT 2").scalar() == 2
