"""The core scenarios again with the service on PostgreSQL."""

import pytest

from harness import Env, scenarios


@pytest.fixture(scope="module")
def env(tmp_path_factory, pg_database):
    e = Env(tmp_path_factory.mktemp("env"), database_uri=pg_database)
    yield e
    e.close()


def test_invite_and_help_on_postgres(env):
    scenarios.invite_and_help(env)


def test_replayed_transaction_is_handled_once_on_postgres(env):
    scenarios.replay(env)
