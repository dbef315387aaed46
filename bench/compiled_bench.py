"""One-row and 100-row predict of the benchmark's RandomForest (100 trees, 20 features): scikit-learn
against its compiled form (ONNX Runtime, one thread), as a runner computes them, with the
compiled form's exactness figures beside the speed.

    .venv/bin/python bench/compiled_bench.py [--seconds 2]

Runs in this process (no servers): the runner's own code (registry.loaders.compiled) on the
model bench/models.py trains, with the warning filter a runner sets. Prints per-call latency
(median of rounds), the speed-up, and max absolute/relative difference and label
disagreements over the verification rows and 10 000 benchmark-like rows.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from registry.loaders.sandbox_child import register_bare_platform_site  # noqa: E402

register_bare_platform_site()
from registry.loaders import compiled  # noqa: E402


def per_call_ms(call, seconds: float) -> float:
    call()
    rounds = []
    for _ in range(5):
        calls, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / 5:
            call()
            calls += 1
        rounds.append((time.perf_counter() - started) / calls * 1e3)
    return statistics.median(rounds)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args(argv)
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    x, y = make_classification(n_samples=2000, n_features=20, n_informative=10, random_state=0)
    forest = RandomForestClassifier(n_estimators=100, random_state=0, n_jobs=1).fit(x, y)
    warnings.resetwarnings()
    warnings.simplefilter("default")  # as a runner does
    started = time.perf_counter()
    result = compiled.compile_estimator(forest, examples=x[:100])
    compile_seconds = time.perf_counter() - started
    assert result.artifact is not None, result.reason
    predictor = compiled.CompiledPredictor(data=result.artifact, estimator=forest)
    rows = x[np.random.default_rng(0).integers(0, len(x), 10_000)].round(4)
    figures = compiled.compare(estimator=forest, predictor=predictor, rows=rows)
    print(
        f"RandomForest 100 trees / 20 features, compiled form {len(result.artifact) / 1e6:.1f} MB, converted and "
        f"verified in {compile_seconds:.2f} s"
    )
    print(f"{'case':<16}{'scikit-learn ms':>16}{'compiled ms':>14}{'speed-up':>10}")
    for label, batch in (("1 row", x[:1]), ("100 rows", x[:100])):
        sk = per_call_ms(functools.partial(forest.predict_proba, batch), args.seconds)
        onnx = per_call_ms(functools.partial(predictor.predict, batch, want_proba=True), args.seconds)
        print(f"{label:<16}{sk:>16.3f}{onnx:>14.3f}{sk / onnx:>9.1f}x")
    for name, found in (("verification rows", result.figures), ("10 000 benchmark rows", figures)):
        print(
            f"exactness on {name} ({found['rows_compared']}): max abs diff {found['max_abs_diff']:g}, "
            f"max rel diff {found['max_rel_diff']:g}, label disagreements {found['label_disagreements']}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
