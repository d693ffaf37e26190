"""ONNX export at every opset: schemas, structure, parity with the PyTorch rendering."""

import collections

import numpy as np
import onnx
import onnx.defs
import pytest

from shufflenet import list_variants, random_weights
from shufflenet.onnx_export import (DEFAULT_OPSET, MIN_OPSET, RULES, ExportError, export_onnx, form,
                                    newest_opset, save_model)
from shufflenet.runtime import Runner
from shufflenet.weights import weights_from_onnx

OPSETS = list(range(MIN_OPSET, newest_opset() + 1))


def _attrs(op, opset):
    return onnx.defs.get_schema(op, opset).attributes


@pytest.mark.parametrize("rule", RULES, ids=lambda r: f"{r.op}-{r.since}-{r.form}")
def test_each_rule_sits_on_a_schema_boundary_and_matches_it(rule):
    schema = onnx.defs.get_schema(rule.op, rule.since)
    assert schema.since_version == rule.since, f"{rule.op} did not change at opset {rule.since}"
    attrs, inputs = schema.attributes, [i.name for i in schema.inputs]
    checks = {
        "consumed_inputs": lambda: attrs["consumed_inputs"].required and "is_test" in attrs,
        "is_test": lambda: "consumed_inputs" not in attrs and "is_test" in attrs and "spatial" in attrs,
        "spatial": lambda: "is_test" not in attrs and "spatial" in attrs,
        "plain": lambda: "spatial" not in attrs and "is_test" not in attrs,
        "shape_attribute": lambda: "shape" in attrs and inputs == ["data"],
        "shape_input": lambda: "shape" not in attrs and inputs == ["data", "shape"],
        "broadcast_attribute": lambda: "broadcast" in attrs,
        "numpy_broadcast": lambda: "broadcast" not in attrs,
        "split_attribute": lambda: "split" in attrs,
        "split_input": lambda: "split" not in attrs and "split" in inputs,
        "implicit_exclude_pad": lambda: "count_include_pad" not in attrs,
        "count_include_pad": lambda: "count_include_pad" in attrs,
        "coerce_2d": lambda: "axis" in attrs,
        "single_axis": lambda: "axis" in attrs,
    }
    assert checks[rule.form]()


def test_every_opset_of_every_ruled_op_has_a_form():
    for op in {r.op for r in RULES}:
        for opset in OPSETS:
            form(op, opset)
    # the forms change exactly where the rules say, e.g. BatchNormalization
    assert [form("BatchNormalization", v) for v in (3, 6, 7, 9, 15)] == [
        "consumed_inputs", "is_test", "spatial", "plain", "plain"]
    assert form("Split", 12) == "split_attribute" and form("Split", 13) == "split_input"


@pytest.fixture(scope="module")
def torch_refs(images224):
    """Reference outputs of the PyTorch rendering, per variant, for batch 3 and 1."""
    torch = pytest.importorskip("torch")
    from shufflenet import build_model

    cache = {}

    def get(name):
        if name not in cache:
            model = build_model(name, seed=0)
            with torch.no_grad():
                cache[name] = model(torch.from_numpy(images224[:3])).numpy()
        return cache[name]

    return get


def _run(model, x):
    runner = Runner(model)
    return runner.run({runner.input_names[0]: x})[0], runner.engine


@pytest.mark.parametrize("name", ["shufflenet_v2_x1_0", "shufflenet_v1_caffe2"])
@pytest.mark.parametrize("opset", OPSETS)
def test_all_opsets_match_pytorch(name, opset, images224, torch_refs):
    model = export_onnx(name, opset=opset, keep_batchnorm=opset in (3, 6, 9, 12, OPSETS[-1]))
    onnx.checker.check_model(model, full_check=True)
    want = torch_refs(name)
    for x, ref in ((images224[:3], want), (images224[:1], want[:1])):
        got, engine = _run(model, x)
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() < 1e-4
    assert ("upgraded copy" in engine) == (opset < 7)


@pytest.mark.parametrize("name", [n for n in list_variants() if n not in ("shufflenet_v2_x1_0", "shufflenet_v1_caffe2")])
def test_every_variant_matches_pytorch(name, images224):
    torch = pytest.importorskip("torch")
    from shufflenet import build_model

    w = random_weights(name, seed=2)
    with torch.no_grad():
        ref = build_model(name, weights=w)(torch.from_numpy(images224[:3])).numpy()
    model = export_onnx(name, weights=w, opset=DEFAULT_OPSET)
    onnx.checker.check_model(model, full_check=True)
    got, _ = _run(model, images224[:3])
    assert np.abs(got - ref).max() < 1e-4


def test_v2_graph_is_clean():
    model = export_onnx("shufflenet_v2_x1_0", opset=12)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert not {"Shape", "Gather", "Unsqueeze", "Cast"} & set(ops)
    assert sum(ops.values()) <= 180
    assert ops["Conv"] == 56 and ops["Transpose"] == 16 and ops["Split"] == 13
    assert "BatchNormalization" not in ops  # folded by default
    for node in model.graph.node:  # the shuffle's reshapes use 0 for the batch
        if node.op_type == "Reshape":
            shape = next(onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name == node.input[1])
            assert shape[0] == 0


def test_dynamic_and_fixed_batch(images224):
    dyn = export_onnx("shufflenet_v2_x0_5")
    dim = dyn.graph.input[0].type.tensor_type.shape.dim
    assert dim[0].dim_param == "N" and [d.dim_value for d in dim[1:]] == [3, 224, 224]
    fixed = export_onnx("shufflenet_v2_x0_5", batch=2)
    assert fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    assert fixed.graph.output[0].type.tensor_type.shape.dim[0].dim_value == 2
    a, _ = _run(dyn, images224[:2])
    b, _ = _run(fixed, images224[:2])
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("opset", [3, 6, 7, 8, 9])
def test_caffe2_zoo_io(opset):
    model = export_onnx("shufflenet_v1_caffe2", opset=opset, batch=1)
    (inp,), (out,) = model.graph.input[:1], model.graph.output
    assert inp.name == "gpu_0/data_0" and out.name == "gpu_0/softmax_1"
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 3, 224, 224]
    assert [d.dim_value for d in out.type.tensor_type.shape.dim] == [1, 1000]
    assert model.graph.node[-1].op_type == "Softmax"
    assert model.opset_import[0].version == opset


def test_io_names_and_metadata():
    model = export_onnx("shufflenet_v2_x1_5", input_name="images", output_name="logits", opset=13)
    assert model.graph.input[0].name == "images" and model.graph.output[0].name == "logits"
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["variant"] == "shufflenet_v2_x1_5" and meta["opset"] == "13"
    assert meta["weights_source"] == "random:0" and len(meta["weights_sha256"]) == 64
    assert '"resize": 232' in meta["preprocessing"] and meta["output_kind"] == "logits"
    assert meta["producer"].startswith("shufflenet ") and meta["weights_trained"] == "false"
    with pytest.raises(ExportError, match="differ"):
        export_onnx("shufflenet_v2_x0_5", input_name="x", output_name="x")


@pytest.mark.parametrize("bad", [2, newest_opset() + 1, "12", True])
def test_opset_is_validated(bad):
    with pytest.raises(ExportError, match="opset must be"):
        export_onnx("shufflenet_v2_x0_5", opset=bad)


@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("name", ["shufflenet_v2_x0_5", "shufflenet_v1_caffe2"])
def test_onnx_initializers_become_weights(tmp_path, keep, name, images224):
    first = export_onnx(name, weights="random:4", keep_batchnorm=keep, opset=11)
    path = save_model(first, tmp_path / "m.onnx")
    second = export_onnx(name, weights=str(path), opset=17)
    a, _ = _run(first, images224[:2])
    b, _ = _run(second, images224[:2])
    assert np.abs(a - b).max() < 1e-4  # kept vs folded BatchNorm: float rounding only


def test_caffe2_converter_names_map_one_to_one(tmp_path):
    """Our Caffe2 V1 names initializers as the zoo's converter did (gpu_0/conv3_0_w_0, SSA
    suffix); weights load from that spelling and from the plain Caffe2 keys alike."""
    model = export_onnx("shufflenet_v1_caffe2", keep_batchnorm=True, opset=9)
    names = {t.name for t in model.graph.initializer}
    assert {"gpu_0/conv3_0_w_0", "gpu_0/conv3_0_b_0", "gpu_0/gconv1_0_bn_riv_0", "gpu_0/pred_w_0"} <= names
    assert not any(n.startswith("gpu_0/") and not n.endswith("_0") for n in names)
    want = random_weights("shufflenet_v1_caffe2", seed=0)
    plain = onnx.ModelProto()
    plain.CopyFrom(model)
    renames = {t.name: t.name.removesuffix("_0") for t in plain.graph.initializer if t.name.startswith("gpu_0/")}
    for t in plain.graph.initializer:
        t.name = renames.get(t.name, t.name)
    for node in plain.graph.node:
        node.input[:] = [renames.get(i, i) for i in node.input]
    for i, m in enumerate((model, plain)):
        save_model(m, tmp_path / f"zoo{i}.onnx")
        got = weights_from_onnx(tmp_path / f"zoo{i}.onnx", __import__("shufflenet").get_spec("shufflenet_v1_caffe2"))
        assert set(got) == {k for k in want if "num_batches" not in k}
        assert all(np.array_equal(got[k], want[k]) for k in got)


def test_onnx_of_another_architecture_is_refused(tmp_path):
    from shufflenet.errors import WeightsError

    save_model(export_onnx("shufflenet_v1_caffe2"), tmp_path / "v1.onnx")
    with pytest.raises(WeightsError, match="not the same network"):
        export_onnx("shufflenet_v2_x1_0", weights=str(tmp_path / "v1.onnx"))


def test_failed_export_keeps_the_existing_file(tmp_path, monkeypatch):
    from shufflenet.cli import main

    target = tmp_path / "m.onnx"
    target.write_bytes(b"precious")
    assert main(["export", "shufflenet_v2_x0_5", "-o", str(target), "--opset", "2"]) == 2
    assert target.read_bytes() == b"precious"

    def interrupted(self):  # the write itself fails half way
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(onnx.ModelProto, "SerializeToString", interrupted)
        with pytest.raises(OSError, match="disk full"):
            save_model(export_onnx("shufflenet_v2_x0_5"), target)
    assert target.read_bytes() == b"precious"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # the temp file went too
    assert main(["export", "shufflenet_v2_x0_5", "-o", str(target), "--weights", "random:1"]) == 0
    onnx.checker.check_model(str(target), full_check=True)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_export_to_decides_the_padded_default_and_refuses_conflicts(tmp_path, capsys):
    """The library, not the CLI, picks the fastest exact graph unless ``faithful``."""
    from shufflenet.cli import main
    from shufflenet.export import export_to
    from shufflenet.optimize import PAD_MULTIPLE

    def meta(path):
        return {p.key: p.value for p in onnx.load(str(path)).metadata_props}

    export_to("shufflenet_v2_x0_5", tmp_path / "fast.onnx", input_size=64)
    export_to("shufflenet_v2_x0_5", tmp_path / "plain.onnx", input_size=64, faithful=True)
    assert meta(tmp_path / "fast.onnx")["channel_padding"] == str(PAD_MULTIPLE)
    assert "channel_padding" not in meta(tmp_path / "plain.onnx")
    for conflict in ({"pad_channels": 8}, {"absorb_shuffle": True}):
        with pytest.raises(ExportError, match="--faithful writes the plain graph") as e:
            export_to("shufflenet_v2_x0_5", tmp_path / "x.onnx", faithful=True, **conflict)
        assert e.value.exit_code == 2
    with pytest.raises(ExportError, match="via must be one of"):
        export_to("shufflenet_v2_x0_5", tmp_path / "x.onnx", via="tf")
    assert not (tmp_path / "x.onnx").exists()
    capsys.readouterr()
    assert main(["export", "shufflenet_v2_x0_5", "--faithful", "--absorb-shuffle", "-o",
                 str(tmp_path / "x.onnx")]) == 2
    assert capsys.readouterr().err == ("shufflenet export: error: --faithful writes the plain graph: "
                                       "drop --pad-channels/--absorb-shuffle\n")


def test_writing_functions_keep_their_old_import_path(tmp_path):
    import shufflenet.export as export
    import shufflenet.validate as validate

    for name in ("export_bundle", "export_variant_via_torch", "expected_outputs", "test_inputs"):
        with pytest.warns(DeprecationWarning, match=f"shufflenet.export.{name}"):
            assert getattr(validate, name) is getattr(export, name)
    with pytest.raises(AttributeError):
        validate.no_such_name  # noqa: B018
    # the old export_to wrote the plain graph unless asked for a rewrite: so does its old path
    with pytest.warns(DeprecationWarning, match="shufflenet.export.export_to"):
        old_export_to = validate.export_to
    old_export_to("shufflenet_v2_x0_5", tmp_path / "old.onnx")
    old_export_to("shufflenet_v2_x0_5", tmp_path / "old-padded.onnx", pad_channels=8)
    padding = {p.key: p.value for p in onnx.load(tmp_path / "old-padded.onnx").metadata_props}.get("channel_padding")
    assert padding == "8"
    assert "channel_padding" not in {p.key for p in onnx.load(tmp_path / "old.onnx").metadata_props}


def test_an_unwritable_output_is_named_not_its_temp_file(tmp_path, monkeypatch):
    """save_model writes a temp file beside the output first: a failure names the output."""
    import errno
    import tempfile

    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / ".m.onnx.x1y2.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    with pytest.raises(PermissionError) as e:
        save_model(export_onnx("shufflenet_v2_x0_5", input_size=64), tmp_path / "m.onnx")
    assert e.value.filename == str(tmp_path / "m.onnx")



@pytest.mark.parametrize("variant", ["shufflenet_v2_x0_5", "shufflenet_v1_g3_x0_5"])
def test_the_default_padded_bundle_is_checked_against_an_independent_rendering(tmp_path, variant):
    """export_to pads by default (V1: nothing to pad); the bundle's expected outputs still come
    from PyTorch or numpy on the description, with the padding cut off the weights, so validate
    checks the graph against something other than itself. Absorbed shuffles cannot be read back."""
    from shufflenet.export import export_to
    from shufflenet.validate import validate

    summary = export_to(variant, tmp_path, test_data=2, input_size=64)
    assert not summary["reference"].startswith("onnxruntime"), summary["reference"]
    assert validate(summary["bundle"]).passed
    absorbed = export_to(variant, tmp_path / "a", test_data=1, input_size=64, absorb_shuffle=True)
    assert absorbed["reference"].startswith("onnxruntime") == (variant.startswith("shufflenet_v2"))
