"""The registry and its metadata: counts recomputed from the descriptions, checked against
published figures (torchvision, the ShuffleNet paper, the Caffe2 predict_net)."""

import re

import pytest

from shufflenet import specs
from shufflenet.errors import SpecError, UnknownVariantError

V2_PARAMS = {  # torchvision's published num_params
    "shufflenet_v2_x0_5": 1_366_792,
    "shufflenet_v2_x1_0": 2_278_604,
    "shufflenet_v2_x1_5": 3_503_624,
    "shufflenet_v2_x2_0": 7_393_996,
}
# torchvision's "GFLOPS" metadata (multiply-accumulates), given to 2-3 decimals
V2_GMACS = {"shufflenet_v2_x0_5": "0.04", "shufflenet_v2_x1_0": "0.145",
            "shufflenet_v2_x1_5": "0.296", "shufflenet_v2_x2_0": "0.583"}
# ShuffleNet paper, Table 1: 1x complexity in MFLOPs (mult-adds, convolutions only)
V1_PAPER_MFLOPS = {1: 143, 2: 140, 3: 137, 4: 133, 8: 137}


def test_registry_names_are_the_designed_set():
    names = specs.list_variants()
    assert len(names) == len(set(names)) == 4 + 5 * 4 + 1
    for n in names:
        assert re.fullmatch(r"shufflenet_v2_x(0_5|1_0|1_5|2_0)|shufflenet_v1_g[12348]_x(0_5|1_0|1_5|2_0)"
                            r"|shufflenet_v1_caffe2", n), n


def test_registry_refuses_duplicates():
    spec = specs.get_spec("shufflenet_v2_x1_0")
    with pytest.raises(ValueError, match="already registered"):
        specs.register(spec)


def test_unknown_variant_lists_close_names():
    with pytest.raises(UnknownVariantError, match="shufflenet_v2_x1_0"):
        specs.get_spec("shufflenet_v2_x1")


@pytest.mark.parametrize("name,params", V2_PARAMS.items())
def test_v2_parameter_counts_equal_torchvision(name, params):
    assert specs.get_spec(name).num_params == params


@pytest.mark.parametrize("name,gmacs", V2_GMACS.items())
def test_v2_macs_equal_torchvision_to_its_precision(name, gmacs):
    decimals = len(gmacs.split(".")[1])
    assert round(specs.get_spec(name).macs / 1e9, decimals) == float(gmacs)


@pytest.mark.parametrize("groups,mflops", V1_PAPER_MFLOPS.items())
def test_v1_complexity_matches_the_paper(groups, mflops):
    graph = specs.get_spec(f"shufflenet_v1_g{groups}_x1_0").graph()
    fc = graph.head.attrs
    conv_macs = graph.macs() - fc["in_features"] * fc["out_features"]
    assert abs(conv_macs / 1e6 - mflops) <= 0.6


@pytest.mark.parametrize("name,mflops", [("shufflenet_v1_g3_x0_5", 38), ("shufflenet_v1_g3_x1_5", 292),
                                         ("shufflenet_v1_g3_x2_0", 524)])
def test_v1_width_multipliers_match_the_paper(name, mflops):
    assert abs(specs.get_spec(name).macs / 1e6 - mflops) <= 2


@pytest.mark.parametrize("groups", [1, 2, 3, 4, 8])
def test_v1_structure_follows_the_paper(groups):
    g = specs.get_spec(f"shufflenet_v1_g{groups}_x1_0").graph()
    convs = [n for n in g.nodes if n.op == "conv"]
    stage2 = specs.V1_STAGE2_WIDTH[groups]
    assert g.shapes()[g.features] == (4 * stage2,)
    first_pw = convs[1]  # stem, then stage 2's first 1x1: not grouped
    assert first_pw.attrs["groups"] == 1 and first_pw.attrs["in_channels"] == 24
    assert first_pw.attrs["out_channels"] == stage2 // 4  # bottleneck = output / 4
    later_pw = [c for c in convs[4:] if c.attrs["kernel"] == 1]
    assert all(c.attrs["groups"] == groups for c in later_pw)
    assert g.count("avgpool") == 3 and g.count("concat") == 3 and g.count("add") == 16 - 3
    assert g.count("shuffle") == (16 if groups > 1 else 0)
    for node in g.nodes:
        if node.op == "concat":  # stride-2 units: [branch, AvgPool 3x3/2 of the input]
            pool = next(n for n in g.nodes if n.output == node.inputs[1])
            assert pool.op == "avgpool" and (pool.attrs["kernel"], pool.attrs["stride"]) == (3, 2)


def test_caffe2_variant_reproduces_the_predict_net():
    spec = specs.get_spec("shufflenet_v1_caffe2")
    g = spec.graph()
    counts = {op: g.count(op) for op in ("conv", "bn", "relu", "shuffle", "add", "concat", "maxpool", "softmax")}
    assert counts == {"conv": 49, "bn": 49, "relu": 33, "shuffle": 16, "add": 13, "concat": 3,
                      "maxpool": 1, "softmax": 1}
    assert g.count("avgpool") + g.count("global_avgpool") == 4
    assert g.shapes()[g.features] == (544, 1, 1)
    assert (g.input, g.output, spec.output_kind) == ("gpu_0/data_0", "gpu_0/softmax_1", "probabilities")
    assert g.num_params == 1_393_320
    assert g.num_stored_floats == 1_420_152  # + BN running mean/var, as the zoo's files store
    table = g.param_table()
    assert list(table)[:7] == ["gpu_0/conv3_0_w", "gpu_0/conv3_0_b", "gpu_0/conv3_0_bn_s",
                               "gpu_0/conv3_0_bn_b", "gpu_0/conv3_0_bn_rm", "gpu_0/conv3_0_bn_riv",
                               "gpu_0/gconv1_0_w"]
    assert list(table)[-2:] == ["gpu_0/pred_w", "gpu_0/pred_b"]
    assert "gpu_0/gconv1_31_bn_riv" in table and "gpu_0/gconv3_15_w" in table
    assert [k for k, p in table.items() if p.op == "conv" and p.role == "bias"] == ["gpu_0/conv3_0_b"]
    # depthwise group counts give the widths: 112 (=136-24), 136 x3, 136, 272 x7, 272, 544 x3
    dw = [n.attrs["groups"] for n in g.nodes if n.op == "conv" and n.attrs["kernel"] == 3][1:]
    assert dw == [112] + [136] * 3 + [136] + [272] * 7 + [272] + [544] * 3
    # every 1x1 conv is grouped by 4, the first unit's included
    assert {n.attrs["groups"] for n in g.nodes if n.op == "conv" and n.attrs["kernel"] == 1} == {4}
    assert table["gpu_0/gconv1_0_w"].shape == (112, 6, 1, 1)


def test_num_classes_changes_only_the_head():
    a, b = specs.get_spec("shufflenet_v2_x0_5").graph(), specs.get_spec("shufflenet_v2_x0_5").graph(10)
    diff = {k for k in a.param_table() if a.param_table()[k].shape != b.param_table()[k].shape}
    assert diff == {"fc.weight", "fc.bias"}
    with pytest.raises(ValueError, match="num_classes"):
        specs.get_spec("shufflenet_v2_x0_5").graph(0)


def test_metadata_is_complete_and_well_formed():
    for spec in map(specs.get_spec, specs.list_variants()):
        assert spec.output_kind in ("logits", "probabilities")
        pp = spec.preprocess
        assert (pp.crop, pp.channel_order, pp.mean, pp.std) == (224, "RGB", (0.485, 0.456, 0.406),
                                                                (0.229, 0.224, 0.225))
        for pub in spec.published:
            assert 0 < pub.top1 < 100 and pub.source
    assert specs.get_spec("shufflenet_v2_x1_5").preprocess.resize == 232
    assert specs.get_spec("shufflenet_v2_x2_0").preprocess.resize == 232
    assert specs.get_spec("shufflenet_v2_x1_0").preprocess.resize == 256


def test_pretrained_artifacts():
    arts = specs.artifacts()
    names = {a.name for a in arts}
    zoo = {"shufflenet-3", "shufflenet-6", "shufflenet-7", "shufflenet-8", "shufflenet-9",
           "shufflenet-v2-10", "shufflenet-v2-12", "shufflenet-v2-12-int8", "shufflenet-v2-12-qdq"}
    assert zoo <= names and {z + ".tar.gz" for z in zoo} <= names
    for a in arts:
        assert a.urls and all(u.startswith("https://") for u in a.urls)
        specs.get_spec(a.variant)
        if a.kind == "torchvision-pth":
            assert a.sha256_prefix and re.fullmatch(r"[0-9a-f]{8,}", a.sha256_prefix)
            assert a.sha256_prefix in a.urls[0]
        else:
            assert re.fullmatch(r"[0-9a-f]{64}", a.sha256) and a.size > 1_000_000
    assert {a.name for a in specs.get_spec("shufflenet_v2_x1_0").pretrained} >= {
        "torchvision-shufflenet_v2_x1_0", "shufflenet-v2-12"}


def test_catalog_rows_are_plain_data():
    import json

    rows = specs.catalog()
    json.dumps(rows)
    assert [r["name"] for r in rows] == specs.list_variants()


def test_spec_errors_are_typed_and_compatible():
    """Every refusal in specs is a ShuffleNetError (CLI exit 2) and still the builtin it was."""
    from shufflenet.errors import ShuffleNetError, SpecError

    cases = [
        lambda: specs.register(specs.get_spec("shufflenet_v2_x1_0")),
        lambda: specs.get_spec("shufflenet_v2_x0_5").graph(0),
        lambda: specs.v1_widths(5, 1.0),
        lambda: specs.v1_widths(3, 0.75),
        lambda: specs.Preprocess(resize=0),
        lambda: specs.Preprocess(interpolation="nearest"),
    ]
    for make in cases:
        with pytest.raises(SpecError) as info:
            make()
        assert isinstance(info.value, ShuffleNetError) and isinstance(info.value, ValueError)
        assert info.value.exit_code == 2
    with pytest.raises(UnknownVariantError) as info:
        specs.get_spec("nope")
    assert isinstance(info.value, ShuffleNetError) and isinstance(info.value, KeyError)
    with pytest.raises(SpecError, match="unknown op"):
        specs._Builder("x").add("gelu", ("x",), "y")
    with pytest.raises(SpecError, match="expects 4 channels"):
        _shapes_4ch(specs.get_spec("shufflenet_v2_x0_5").graph())


def _shapes_4ch(g):
    """Run the shape walk with the first conv declared for 4 input channels."""
    import dataclasses
    first = dataclasses.replace(g.nodes[0], attrs={**g.nodes[0].attrs, "in_channels": 4})
    return dataclasses.replace(g, nodes=(first, *g.nodes[1:])).shapes()


def test_graph_names_its_classifier_head():
    for name in specs.list_variants():
        g = specs.get_spec(name).graph(7)
        head = g.head
        assert head.op == "linear" and head.attrs["out_features"] == 7
        assert set(head.params) == {"weight", "bias"}
        # the head reads the flattened features (Caffe2's V1 names the pooled tensor as features)
        flat = next(n for n in g.nodes if n.output == head.inputs[0])
        assert flat.op == "flatten" and g.features in (flat.output, flat.inputs[0])
        # and writes the logits: the graph output, or the Softmax's input for the Caffe2 V1
        assert head.output == g.output or g.nodes[-1].inputs == (head.output,)
    import dataclasses
    g = specs.get_spec("shufflenet_v2_x0_5").graph()
    with pytest.raises(SpecError, match="found 0 linear"):
        dataclasses.replace(g, nodes=g.nodes[:-1]).head


def test_default_artifact_is_data_one_per_variant():
    """The default pretrained artifact is a flag in artifacts.json, read by one accessor."""
    for name in specs.list_variants():
        spec = specs.get_spec(name)
        flagged = [a for a in spec.pretrained if a.default]
        assert len(flagged) == (1 if spec.pretrained else 0), name
        art = specs.default_artifact(name)
        assert art is (flagged[0] if flagged else None)
        if art is not None:  # weights to load: a checkpoint or an fp32 model, never a bundle or int8
            assert art.kind in ("torchvision-pth", "zoo-onnx") and art.quantization is None
            assert specs.default_artifact(name, art.kind) is art
            assert specs.default_artifact(name, "zoo-bundle") is None
    assert specs.default_artifact("shufflenet_v2_x1_0").kind == "torchvision-pth"
    # the Caffe2 V1: the newest fp32 file of the zoo (what both old code paths chose)
    assert specs.default_artifact("shufflenet_v1_caffe2").name == "shufflenet-9"
    assert specs.default_artifact("shufflenet_v1_g3_x1_0") is None
    with pytest.raises(UnknownVariantError):
        specs.default_artifact("shufflenet_v3")


def test_preprocessing_belongs_to_the_weights():
    """torchvision evaluates its x1.5 / x2.0 weights at resize 232: the weights entry says so and
    the spec's accessor reports it; the architecture's own recipe stays torchvision's 256/224."""
    for w, resize in (("x0_5", 256), ("x1_0", 256), ("x1_5", 232), ("x2_0", 232)):
        spec = specs.get_spec(f"shufflenet_v2_{w}")
        assert spec.base_preprocess == specs.Preprocess()
        assert spec.preprocess.resize == resize and spec.preprocess.crop == 224
        art = specs.default_artifact(spec.name)
        assert (art.preprocess is None) == (resize == 256)
    row = specs.catalog(["shufflenet_v2_x1_5"])[0]
    import json
    assert json.loads(json.dumps(row))["pretrained"][0]["preprocess"]["resize"] == 232


def test_graph_producers_and_consumers():
    """One map each for the graph walkers (optimize's rewrites): who writes and who reads a tensor."""
    g = specs.get_spec("shufflenet_v2_x0_5").graph()
    producers, consumers = g.producers(), g.consumers()
    assert set(producers) == {o for n in g.nodes for o in n.outputs}
    assert g.input not in producers and producers[g.output] is g.head
    assert consumers[g.input] == [g.nodes[0]] and g.output not in consumers
    assert consumers[g.features] == [g.head]
    split = next(n for n in g.nodes if n.op == "split")
    assert [n.op for n in consumers[split.outputs[0]]] == ["concat"]
    # graph order, every read listed
    assert sum(len(v) for v in consumers.values()) == sum(len(n.inputs) for n in g.nodes)


@pytest.mark.parametrize("make", [
    lambda: specs.Preprocess(mean="abc"),  # three characters, not three numbers
    lambda: specs.Preprocess(std=("a", "b", "c")),
    lambda: specs.Preprocess(mean=(0.5, float("nan"), 0.5)),
    lambda: specs.Preprocess(scale="255"),
    lambda: specs.Preprocess(mean=None),
    lambda: specs.Preprocess(std=(1.0, 1.0)),
    lambda: specs.get_spec("shufflenet_v2_x0_5").graph([10]),
    lambda: specs.get_spec("shufflenet_v2_x0_5").graph(2.0),
    lambda: specs.v1_widths([3], 1.0),
    lambda: specs.v1_widths(3, {}),
])
def test_wrong_types_are_spec_errors(make):
    """A wrong type is refused like a wrong value (SpecError, CLI exit 2), never a bare TypeError."""
    from shufflenet.errors import SpecError

    with pytest.raises(SpecError):
        make()


def test_unhashable_variant_name_is_unknown():
    with pytest.raises(UnknownVariantError, match="unknown variant"):
        specs.get_spec(["shufflenet_v2_x0_5"])


def test_graph_reading_an_unwritten_tensor_is_a_spec_error():
    import dataclasses

    from shufflenet.errors import SpecError

    g = specs.get_spec("shufflenet_v2_x0_5").graph()
    broken = dataclasses.replace(g, nodes=g.nodes[1:])  # the stem conv's output is never written
    with pytest.raises(SpecError, match="which no earlier node writes"):
        broken.shapes()
