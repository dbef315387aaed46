import pytest


@pytest.fixture(autouse=True)
def _roll_up_on_the_test_connection(settings):
    """Tests run inside a transaction other connections cannot see: roll up hours one by one.

    Concurrent rollups (ANALYTICS_ROLLUP_CONCURRENCY > 1) open a connection per thread;
    the one test of that path commits its data (transaction=True) and sets it itself.
    """
    settings.ANALYTICS_ROLLUP_CONCURRENCY = 1
