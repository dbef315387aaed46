"""The in-process model cache under threads: lookups racing eviction, and loaders that fail."""
from __future__ import annotations

import sys
import threading
import time

import pytest

from inference.model_cache import ModelCache


@pytest.fixture
def frequent_thread_switches():
    """Switch threads every microsecond so an unlocked step between two locked ones is hit."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(previous)


def test_lookups_racing_eviction_never_fail(settings, frequent_thread_switches):
    settings.MODEL_CACHE_MAX_MODELS = 2
    settings.MODEL_CACHE_MAX_MB = 1024
    cache = ModelCache()
    errors: list[BaseException] = []
    lookups = [0] * 4
    deadline = time.monotonic() + 3.0

    def churn(worker: int) -> None:
        # Two hot versions looked up again and again while the others keep evicting them.
        n = 0
        while time.monotonic() < deadline:
            version_id = n % 2 if worker % 2 == 0 else 2 + n % 5
            try:
                loaded = cache.get(version_id, size_bytes=1, load=lambda: object())
                assert loaded.version_id == version_id
            except BaseException as exc:  # noqa: BLE001 - every failure is what the test counts
                errors.append(exc)
            n += 1
        lookups[worker] = n

    threads = [threading.Thread(target=churn, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert sum(lookups) > 10_000
    assert len(cache) <= 2


def test_a_loader_that_raises_leaves_no_gate_and_the_next_call_loads_again():
    cache = ModelCache()

    def broken():
        raise OSError("storage unavailable")

    with pytest.raises(OSError, match="storage unavailable"):
        cache.get(7, size_bytes=1, load=broken)
    assert cache.loading_versions() == set()
    assert 7 not in cache
    loaded = cache.get(7, size_bytes=1, load=lambda: "estimator")
    assert loaded.estimator == "estimator"
    assert cache.loading_versions() == set()


def test_concurrent_first_lookups_load_a_version_once(frequent_thread_switches):
    cache = ModelCache()
    loads = []
    start = threading.Barrier(8)

    def slow_load():
        loads.append(1)
        time.sleep(0.05)
        return "estimator"

    def first_lookup():
        start.wait()
        cache.get(3, size_bytes=1, load=slow_load)

    threads = [threading.Thread(target=first_lookup) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(loads) == 1
    assert cache.loading_versions() == set()
