"""The binding against a real ps-server on loopback."""
import os

import numpy
import pytest

import slowlink
from harness import certs

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


def test_the_initial_models_upload_is_counted_apart_from_updates(server):
    address = server("--mode=sync", "--num_workers=2")
    first, second = slowlink.Session([address]), slowlink.Session([address])
    first.join(slowlink.Layout([("params", (1000,))]), numpy.ones(1000, dtype=numpy.float32))
    second.join(slowlink.Layout([("params", (1000,))]), numpy.ones(1000, dtype=numpy.float32))
    uploaded = first.counters()["upload_bytes_sent"]
    assert 4000 <= uploaded <= 4000 + 1024  # the model and its header, once
    assert uploaded < first.counters()["bytes_sent"]
    assert second.counters()["upload_bytes_sent"] == 0  # the server had a model by then
    first.leave()
    second.leave()


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
    with pytest.raises(TypeError, match="float32"):
        s.push(numpy.zeros(10, dtype=numpy.int32))
    with pytest.raises(ValueError, match="not aligned"):
        s.push(numpy.frombuffer(bytes(41), dtype=numpy.float32, offset=1))
    with pytest.raises(ValueError, match="read-only"):
        frozen = numpy.zeros(10, dtype=numpy.float32)
        frozen.setflags(write=False)
        s.sync(frozen)
    # The encoder refuses NaN before anything is sent; nothing moved, here or on the server.
    assert s.version == 1 and s.counters()["updates"] == 0
    status = s.server_status()
    assert status["version"] == "1" and status["updates_applied"] == "0"
    numpy.testing.assert_array_equal(s.model(), numpy.zeros(10, dtype=numpy.float32))
    s.leave()


def test_another_layout_is_refused_naming_the_tensor(server):
    address = server("--mode=async", "--num_workers=2")
    first = slowlink.Session([address], name="first")
    first.join(slowlink.Layout(LAYOUT), numpy.zeros(10, dtype=numpy.float32))
    other = slowlink.Session([address], name="other")
    with pytest.raises(slowlink.FailedPreconditionError, match=r"w \[4, 2\]") as e:
        other.join(slowlink.Layout([("w", (4, 2)), ("b", (2,))]),
                   numpy.zeros(10, dtype=numpy.float32))
    assert e.value.code == "FAILED_PRECONDITION"
    first.leave()


def test_a_bad_layout_and_no_server_are_python_exceptions():
    with pytest.raises(slowlink.InvalidArgumentError):
        slowlink.Layout([("w", (0,))])
    s = slowlink.Session(["127.0.0.1:1"], retry_budget=0.0, rpc_timeout=1.0)
    with pytest.raises((slowlink.UnavailableError, slowlink.DeadlineExceededError)):
        s.join(slowlink.Layout(LAYOUT), numpy.zeros(10, dtype=numpy.float32))



@pytest.mark.parametrize("encoding", ["fp32", "fp16", "bf16", "qsgd", "sign"])
def test_push_and_pull_in_every_encoding(server, encoding):
    address = server("--mode=sync", "--num_workers=1", "--pull_encoding=fp32")
    s = slowlink.Session([address], update_encoding=encoding, bits=4)
    run = s.join(slowlink.Layout(LAYOUT), numpy.zeros(10, dtype=numpy.float32))
    assert run["config"]["update_encoding"]["encoding"] == "ENCODING_" + encoding.upper()
    delta = numpy.linspace(-1, 1, 10, dtype=numpy.float32)
    params = s.model() + delta
    r = s.sync(params)
    assert r["version"] == 2
    numpy.testing.assert_array_equal(params, s.model())
    if encoding in ("fp32", "fp16", "bf16"):  # deterministic: exactly the decoded delta
        codec = slowlink.Codec(encoding)
        numpy.testing.assert_array_equal(params, codec.decode(codec.encode(delta), 10))
    elif encoding == "qsgd":  # 4 bits, max-abs scaling: within one level of 1/7
        assert numpy.abs(params - delta).max() <= 1 / 7 + 1e-6
    else:  # one scale per bucket, the sign of each coordinate
        assert (numpy.sign(params) == numpy.sign(delta)).all()
    c = s.counters()
    assert c["updates"] == 1 and 0 < c["bytes_sent"]
    s.leave()


def test_the_codecs_are_the_servers():
    values = numpy.random.default_rng(1).normal(size=1000).astype(numpy.float32)
    fp32 = slowlink.Codec("fp32")
    assert fp32.encode(values) == values.tobytes()  # little-endian floats, nothing else
    numpy.testing.assert_array_equal(fp32.decode(fp32.encode(values), 1000), values)
    qsgd = slowlink.Codec("qsgd", bits=4, bucket_size=128, seed=7)
    payload = qsgd.encode(values)
    assert len(payload) == qsgd.encoded_size(1000) == 8 * 4 + 500
    assert payload == slowlink.Codec("qsgd", bits=4, bucket_size=128, seed=7).encode(values)
    decoded = qsgd.decode(payload, 1000)
    assert numpy.abs(decoded - values).max() < numpy.abs(values).max() / 7 + 1e-5
    assert repr(qsgd) == "QSGD(bits=4, bucket=128)"
    with pytest.raises(slowlink.InvalidArgumentError, match="must have 532 bytes, got 531"):
        qsgd.decode(payload[:-1], 1000)
    with pytest.raises(slowlink.InvalidArgumentError, match="bits must be in"):
        slowlink.Codec("qsgd", bits=9)
    with pytest.raises(slowlink.InvalidArgumentError, match="unknown encoding"):
        slowlink.Codec("zip")
    with pytest.raises(slowlink.InvalidArgumentError, match="NaN"):
        fp32.encode(numpy.array([1.0, numpy.nan], dtype=numpy.float32))


def test_two_shards_hold_their_parts_of_the_model(server):
    shards = [server("--mode=sync", "--num_workers=1", "--shard_count=2", f"--shard_index={i}")
              for i in range(2)]
    s = slowlink.Session(shards)
    initial = numpy.arange(10, dtype=numpy.float32)
    s.join(slowlink.Layout(LAYOUT), initial)
    numpy.testing.assert_array_equal(s.model(), initial)
    params = initial * 2
    s.sync(params)
    numpy.testing.assert_array_equal(params, initial * 2)
    for i, a in enumerate(shards):  # each shard took its own update and made its version 2
        status = slowlink.Session([a]).server_status()
        assert (status["shard_index"], status["shard_count"], status["version"]) == (i, 2, "2")
    s.leave()


def make_tls(folder):
    """A CA, a certificate for 127.0.0.1 and a token file."""
    files = certs.make_server_certificate(folder, "IP:127.0.0.1")
    files["tokens"] = os.path.join(folder, "tokens")
    with open(files["tokens"], "w") as f:
        f.write("py-worker s3cret-token-0123456789\n")
    return files


def test_tls_with_tokens(server, tmp_path):
    f = make_tls(str(tmp_path))
    address = server("--mode=sync", "--num_workers=1", f"--tls_cert={f['server.pem']}",
                     f"--tls_key={f['server.key']}", f"--tokens_file={f['tokens']}")
    good = slowlink.Session([address], name="py-worker", token="s3cret-token-0123456789", tls_ca=f["ca.pem"])
    good.join(slowlink.Layout(LAYOUT), numpy.zeros(10, dtype=numpy.float32))
    params = good.model() + 1
    assert good.sync(params)["version"] == 2
    wrong = slowlink.Session([address], name="py-worker", token="a-guess-0123456789", tls_ca=f["ca.pem"],
                             retry_budget=0.0)
    with pytest.raises(slowlink.PermissionDeniedError):
        wrong.join(slowlink.Layout(LAYOUT), numpy.zeros(10, dtype=numpy.float32))
    plaintext = slowlink.Session([address], name="py-worker", token="s3cret-token-0123456789", retry_budget=0.0,
                                 rpc_timeout=2.0)
    with pytest.raises(slowlink.Error):
        plaintext.join(slowlink.Layout(LAYOUT), numpy.zeros(10, dtype=numpy.float32))
    assert good.server_status()["version"] == "2"  # the refused calls changed nothing
    good.leave()


def test_help_says_what_things_do():
    assert "Local SGD synchronisation" in slowlink.Session.sync.__doc__
    assert "retry budget" in slowlink.UnavailableError.__doc__
    assert issubclass(slowlink.NotMemberError, slowlink.Error)
    assert "wire codec" in slowlink.Codec.__doc__


def test_float32_arrays_from_anywhere_are_float32(server):
    """dtype equality, not identity: an array that went through pickle (DataLoader workers,
    multiprocessing) has a float32 dtype object of its own."""
    import pickle
    address = server("--mode=sync", "--num_workers=1", "--update_encoding=fp32")
    s = slowlink.Session([address])
    s.join(slowlink.Layout(LAYOUT), numpy.zeros(10, dtype=numpy.float32))
    params = pickle.loads(pickle.dumps(numpy.ones(10, dtype=numpy.float32)))
    assert s.sync(params)["version"] == 2
    numpy.testing.assert_array_equal(s.model(), numpy.ones(10, dtype=numpy.float32))
    s.leave()
