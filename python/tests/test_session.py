"""The binding against a real ps-server on loopback."""
import numpy
import pytest

import slowlink

LAYOUT = [("w", (2, 4)), ("b", (2,))]


def test_join_sync_leave_through_a_server_told_only_the_layout(server):
    address = server("--model_size=10", "--mode=sync", "--num_workers=1")
    s = slowlink.Session([address], name="py")
    initial = numpy.arange(10, dtype=numpy.float32)
    run = s.join(slowlink.Layout([("params", (10,))]), initial)
    assert run["sync"] and run["num_workers"] == 1 and run["version"] == 1
    numpy.testing.assert_array_equal(s.model(), initial)
    params = s.model()
    params += 0.5
    r = s.sync(params)
    assert r["version"] == 2 and r["stale_refusals"] == 0
    numpy.testing.assert_array_equal(params, initial + 0.5)  # written back in place
    numpy.testing.assert_array_equal(s.model(), params)
    assert s.counters()["updates"] == 1
    s.leave()


def test_bad_arrays_raise_and_send_nothing(server):
    address = server("--mode=sync", "--num_workers=1")
    s = slowlink.Session([address])
    s.join(slowlink.Layout(LAYOUT), numpy.zeros(10, dtype=numpy.float32))
    with pytest.raises(TypeError, match="float32"):
        s.sync(numpy.zeros(10, dtype=numpy.float64))
    with pytest.raises(ValueError, match="has 9 values; the model has 10"):
        s.sync(numpy.zeros(9, dtype=numpy.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        s.sync(numpy.zeros(20, dtype=numpy.float32)[::2])
    with pytest.raises(slowlink.InvalidArgumentError, match="NaN"):
        s.push(numpy.full(10, numpy.nan, dtype=numpy.float32))
    # The encoder refuses NaN before anything is sent; the model did not move.
    assert s.version == 1 and s.counters()["updates"] == 0
    s.leave()


def test_another_layout_is_refused_naming_the_tensor(server):
    address = server("--mode=async", "--num_workers=2")
    first = slowlink.Session([address], name="first")
    first.join(slowlink.Layout(LAYOUT), numpy.zeros(10, dtype=numpy.float32))
    other = slowlink.Session([address], name="other")
    with pytest.raises(slowlink.FailedPreconditionError, match=r"w \[4, 2\]"):
        other.join(slowlink.Layout([("w", (4, 2)), ("b", (2,))]),
                   numpy.zeros(10, dtype=numpy.float32))
    first.leave()


def test_a_bad_layout_and_no_server_are_python_exceptions():
    with pytest.raises(slowlink.InvalidArgumentError):
        slowlink.Layout([("w", (0,))])
    s = slowlink.Session(["127.0.0.1:1"], retry_budget=0.0, rpc_timeout=1.0)
    with pytest.raises((slowlink.UnavailableError, slowlink.DeadlineExceededError)):
        s.join(slowlink.Layout(LAYOUT), numpy.zeros(10, dtype=numpy.float32))
