"""Numpy weights: seeded random init, architecture checks, .npz/.safetensors without torch."""

import numpy as np
import pytest

from shufflenet import random_weights, load_weights, save_weights
from shufflenet.errors import WeightsError
from shufflenet.specs import get_spec
from shufflenet.weights import conform, resolve_weights, weights_digest

V2 = "shufflenet_v2_x0_5"


@pytest.fixture(scope="module")
def w():
    return random_weights(V2, seed=3)


def test_random_weights_are_seeded(w):
    again = random_weights(V2, seed=3)
    other = random_weights(V2, seed=4)
    assert weights_digest(w) == weights_digest(again) != weights_digest(other)
    assert list(w) == list(get_spec(V2).graph().param_table())


def test_random_bn_statistics_are_not_trivial(w):
    var = w["stage3.2.branch2.4.running_var"]
    mean = w["stage3.2.branch2.4.running_mean"]
    assert np.all(var > 0) and var.std() > 0.01 and not np.allclose(var, 1)
    assert np.abs(mean).max() > 0.01
    assert w["conv1.1.num_batches_tracked"].dtype == np.int64


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_round_trip(tmp_path, w, suffix):
    path = save_weights(w, tmp_path / f"w{suffix}")
    back = load_weights(path)
    assert list(back) == list(w)
    for k in w:
        assert back[k].dtype == w[k].dtype and np.array_equal(back[k], w[k])
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_safetensors_interoperates_with_the_reference_library(tmp_path, w):
    st = pytest.importorskip("safetensors.numpy")
    save_weights(w, tmp_path / "ours.safetensors", metadata={"variant": V2})
    theirs = st.load_file(str(tmp_path / "ours.safetensors"))
    assert all(np.array_equal(theirs[k], w[k]) for k in w)
    st.save_file({k: np.asarray(v, order="C") for k, v in w.items()}, str(tmp_path / "theirs.safetensors"))
    ours = load_weights(tmp_path / "theirs.safetensors")
    assert all(np.array_equal(ours[k], w[k]) for k in w)


@pytest.mark.parametrize("payload", [b"", b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json",
                                     b"\xff" * 8 + b"{}",
                                     b'\x40\x00\x00\x00\x00\x00\x00\x00{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}  '])
def test_malformed_safetensors_is_a_clear_error(tmp_path, payload):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(payload)
    with pytest.raises(WeightsError, match="bad.safetensors"):
        load_weights(p)


def test_npz_with_pickled_objects_is_refused(tmp_path):
    p = tmp_path / "obj.npz"
    np.savez(p, a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(WeightsError, match="obj.npz"):
        load_weights(p)


def test_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="unsupported"):
        save_weights({}, tmp_path / "w.bin")
    with pytest.raises(WeightsError, match="not found"):
        load_weights(tmp_path / "nope.npz")


def test_conform_names_the_first_problem(w):
    graph = get_spec(V2).graph()
    missing = dict(w)
    del missing["stage2.0.branch1.0.weight"]
    with pytest.raises(WeightsError, match=r"missing key 'stage2.0.branch1.0.weight'"):
        conform(missing, graph)
    with pytest.raises(WeightsError, match=r"unexpected key 'extra.weight'"):
        conform({**w, "extra.weight": np.zeros(1)}, graph)
    bad = {**w, "conv5.0.weight": np.zeros((7, 192, 1, 1), np.float32)}
    with pytest.raises(WeightsError, match=r"'conv5.0.weight' has shape \(7, 192, 1, 1\).*\(1024, 192, 1, 1\)"):
        conform(bad, graph)
    nan = {**w, "fc.bias": np.full(1000, np.nan, np.float32)}
    with pytest.raises(WeightsError, match="NaN"):
        conform(nan, graph)
    # old checkpoints without BN counters load, the counters filled like torch does
    old = {k: v for k, v in w.items() if not k.endswith("num_batches_tracked")}
    assert conform(old, graph)["conv1.1.num_batches_tracked"] == 0


def test_weights_of_another_architecture_are_refused():
    caffe2 = random_weights("shufflenet_v1_caffe2", seed=0)
    with pytest.raises(WeightsError, match="unexpected key 'gpu_0/conv3_0_w'"):
        resolve_weights(caffe2, V2)
    with pytest.raises(WeightsError, match="has shape"):
        resolve_weights(random_weights("shufflenet_v2_x1_0"), V2)


def test_resolve_spellings(tmp_path, w):
    a, src, n = resolve_weights("random:7", V2)
    b, _, _ = resolve_weights(None, V2, seed=7)
    assert weights_digest(a) == weights_digest(b) and src.description == "random:7" and n == 1000
    with pytest.raises(WeightsError, match="random:SEED"):
        resolve_weights("random:x", V2)
    with pytest.raises(WeightsError, match="disagree"):
        resolve_weights("random:1", V2, seed=2)
    path = save_weights(w, tmp_path / "w.npz")
    got, src, _ = resolve_weights(str(path), V2)
    assert src.kind == "file" and len(src.sha256) == 64 and weights_digest(got) == weights_digest(w)
    with pytest.raises(WeightsError, match="seed"):
        resolve_weights(str(path), V2, seed=1)


def test_num_classes_must_agree_with_the_weights():
    ten = random_weights(V2, num_classes=10)
    _, _, n = resolve_weights(ten, V2)
    assert n == 10
    with pytest.raises(WeightsError, match="num_classes=1000 contradicts.*10 outputs"):
        resolve_weights(ten, V2, num_classes=1000)


def test_random_weights_memoised_returns_private_copies():
    from shufflenet.weights import _random_weights_cached, random_weights

    a = random_weights("shufflenet_v2_x0_5", seed=3, num_classes=10)
    hits = _random_weights_cached.cache_info().hits
    b = random_weights("shufflenet_v2_x0_5", seed=3, num_classes=10)
    assert _random_weights_cached.cache_info().hits == hits + 1
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert all(a[k] is not b[k] and not np.shares_memory(a[k], b[k]) for k in a)
    a["fc.weight"][:] = 0  # a caller changing its copy changes nobody else's
    c = random_weights("shufflenet_v2_x0_5", seed=3, num_classes=10)
    assert np.array_equal(c["fc.weight"], b["fc.weight"]) and np.abs(c["fc.weight"]).sum() > 0
    # the key is (variant, seed, num_classes): any change gives other weights
    assert not np.array_equal(random_weights("shufflenet_v2_x0_5", seed=4, num_classes=10)["fc.weight"],
                              b["fc.weight"])
    assert random_weights("shufflenet_v2_x0_5", seed=3, num_classes=7)["fc.weight"].shape == (7, 1024)
    # a stateful Generator as seed is not cached: each call draws new weights
    gen = np.random.default_rng(0)
    g1 = random_weights("shufflenet_v2_x0_5", seed=gen, num_classes=10)
    g2 = random_weights("shufflenet_v2_x0_5", seed=gen, num_classes=10)
    assert not np.array_equal(g1["fc.weight"], g2["fc.weight"])


def test_weights_from_a_loaded_model_equal_those_from_its_file(tmp_path):
    """A ModelProto in memory reads as its file does (export's reference outputs use this,
    without a round trip through a temp file)."""
    import numpy as np
    import onnx

    from shufflenet.onnx_export import export_onnx
    from shufflenet.specs import get_spec
    from shufflenet.weights import weights_from_onnx

    spec = get_spec("shufflenet_v2_x0_5")
    model = export_onnx(spec.name, weights="random:3")
    onnx.save(model, tmp_path / "m.onnx")
    from_file, in_memory = weights_from_onnx(tmp_path / "m.onnx", spec), weights_from_onnx(model, spec)
    assert sorted(from_file) == sorted(in_memory)
    assert all(np.array_equal(from_file[k], in_memory[k]) for k in from_file)
