"""Fixtures shared by the population tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def spark_session():
    """The process's Spark session, tuned for tiny data (no code generation), made once for every Spark test of the
    test session whichever file runs first."""
    from joinedup.population.views import spark

    return spark.session(small=True)
