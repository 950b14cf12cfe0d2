"""Prefetching, strided histograms and the IOBinding runner."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import tiny_model
from trtq.runtime.onnxruntime import BoundRunner, Runner, session
from trtq.calib.stats import TensorStats
from trtq.data.sources import prefetch
from trtq.errors import DataError


def test_prefetch_keeps_order_and_surfaces_errors_in_place():
    assert list(prefetch(range(100), depth=3)) == list(range(100))

    def failing():
        yield 1
        yield 2
        raise DataError("bad sample 3")

    got = []
    with pytest.raises(DataError, match="bad sample 3"):
        for item in prefetch(failing()):
            got.append(item)
    assert got == [1, 2]


def test_abandoned_prefetch_stops_its_producer():
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    it = prefetch(endless(), depth=2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()
    import time

    time.sleep(0.3)
    n = len(produced)
    time.sleep(0.3)
    assert len(produced) == n and n < 10


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.sampled_from([1, 2, 5]), st.sampled_from([2, 4]))
def test_strided_histogram_is_still_batch_size_independent(n, batch, stride):
    x = np.random.default_rng(n).normal(size=(n, 3, 5)).astype(np.float32)
    whole, parts = TensorStats(), TensorStats()
    whole.update(x, stride)
    for i in range(0, n, batch):
        parts.update(x[i:i + batch], stride)
    assert whole == parts
    assert whole.count == x.size and whole.hist.sum() == n * len(range(0, 15, stride))
    assert whole.absmax == float(np.abs(x).max())  # min/max stay exact


def test_bound_runner_matches_the_plain_runner_across_batch_shapes():
    model = tiny_model()
    plain, bound = Runner(session(model)), BoundRunner(session(model))
    rng = np.random.default_rng(0)
    for n in (4, 4, 3, 4):
        x = rng.normal(size=(n, 3, 8, 8)).astype(np.float32)
        a = plain({"input": x})[0]
        b = bound({"input": x})[0]
        np.testing.assert_allclose(a, b, rtol=1e-6)
