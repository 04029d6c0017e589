"""Fixtures shared by the integration tests; see harness/ for the pieces."""

from __future__ import annotations

import os

import pytest

from harness import Env, util
from harness.postgres import fresh_database


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the tail of every running component's log to the report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and report.when in ("setup", "call"):
        for component in list(util.ACTIVE):
            report.sections.append((f"{component.name} log ({component.dir})", component.logs()))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One Synapse + tchap-visio (SQLite, default config) for the whole module."""
    e = Env(tmp_path_factory.mktemp("env"))
    yield e
    e.close()


@pytest.fixture
def fresh_env(tmp_path_factory):
    """A Synapse + tchap-visio pair of this test's own (for tests that break things)."""
    e = Env(tmp_path_factory.mktemp("env"))
    yield e
    e.close()


@pytest.fixture(scope="session")
def postgres_url():
    """A server URL for PostgreSQL tests: $TCHAP_VISIO_TEST_POSTGRES_URL (set by scripts/test.sh)."""
    url = os.environ.get("TCHAP_VISIO_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("TCHAP_VISIO_TEST_POSTGRES_URL is not set: run the suite through scripts/test.sh")
        pytest.skip("TCHAP_VISIO_TEST_POSTGRES_URL is not set (scripts/test.sh starts a PostgreSQL)")
    return url


@pytest.fixture(scope="module")
def pg_database(postgres_url):
    """A fresh, empty PostgreSQL database; its URL."""
    with fresh_database(postgres_url) as url:
        yield url
