"""The deploy tests read files and run command-line checkers: no database, no cache."""

import pytest


@pytest.fixture(autouse=True)
def _clean_caches():
    """Replaces the project-wide autouse fixture: these tests never touch the cache."""
    yield
