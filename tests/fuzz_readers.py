"""Property-based fuzzing of every reader of untrusted files (issue 13).

Run as a script, one reader per process, so the address-space limit and the per-example alarm
apply to the reader alone::

    python tests/fuzz_readers.py READER [--examples N] [--random]

READER: pth, safetensors, npz, onnx, tar, pb, labels, images (or ``all``). Each example is a
random mutation of a valid seed file (bit flips, overwritten bytes, boundary integers written
over length fields, insertions, deletions, duplicated spans, truncation); the reader must return
or raise a ShuffleNetError: any other exception, a MemoryError under the address-space limit,
or an example running past the alarm is a failure, which hypothesis shrinks and prints.
``tests/test_fuzz.py`` runs every reader with a small example count; docs/limits.md has the
command for a longer run.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import struct
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from PIL import Image  # noqa: E402

from shufflenet.errors import ShuffleNetError  # noqa: E402

#: address space the reader may grow by, over what the interpreter and its imports hold: room for
#: the largest allowed tensor (limits.MAX_TENSOR_BYTES) with its copies, no more
HEADROOM_BYTES = 2 << 30
EXAMPLE_SECONDS = 20  # one example; the largest legal read of a mutated seed takes well under 1 s

# --------------------------------------------------------------------------- seeds


def _pickle_str(text: str) -> bytes:
    b = text.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _tensor_call(key: str, numel: int, size: tuple[int, ...]) -> bytes:
    stride, acc = [], 1
    for d in reversed(size):
        stride.insert(0, acc)
        acc *= d

    def ints(values):
        return b"(" + b"".join(b"J" + struct.pack("<i", v) for v in values) + b"t"

    storage = (b"(" + _pickle_str("storage") + b"ctorch\nFloatStorage\n" + _pickle_str(key)
               + _pickle_str("cpu") + b"J" + struct.pack("<i", numel) + b"tQ")
    return (b"ctorch._utils\n_rebuild_tensor_v2\n(" + storage + b"J\x00\x00\x00\x00" + ints(size)
            + ints(stride) + b"\x89}tR")


def _state_pickle() -> bytes:
    """{'conv.weight': 2x3 tensor (storage 0), 'fc.bias': 4 (storage 1)} in torch's pickle shape."""
    return (b"\x80\x02ccollections\nOrderedDict\n)R(" + _pickle_str("conv.weight") + _tensor_call("0", 6, (2, 3))
            + _pickle_str("fc.bias") + _tensor_call("1", 4, (4,)) + b"u.")


def seed_pth(tmp: Path) -> list[Path]:
    zipped = tmp / "zip.pth"
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("archive/data.pkl", _state_pickle())
        z.writestr("archive/data/0", np.arange(6, dtype="<f4").tobytes())
        z.writestr("archive/data/1", np.arange(4, dtype="<f4").tobytes())
    import pickle

    legacy = tmp / "legacy.pth"
    head = b"".join(pickle.dumps(x, protocol=2) for x in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}))
    keys = pickle.dumps(["0", "1"], protocol=2)
    body = (struct.pack("<q", 6) + np.arange(6, dtype="<f4").tobytes()
            + struct.pack("<q", 4) + np.arange(4, dtype="<f4").tobytes())
    legacy.write_bytes(head + _state_pickle() + keys + body)
    return [zipped, legacy]


def seed_weights(tmp: Path, suffix: str) -> list[Path]:
    from shufflenet.weights import save_weights

    arrays = {"conv.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2),
              "bn.num_batches_tracked": np.array(3, np.int64), "fc.bias": np.ones(5, np.float16)}
    return [save_weights(arrays, tmp / f"w{suffix}", **({"metadata": {"k": "v"}} if suffix == ".safetensors" else {}))]


def _ext_model(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "w.bin").write_bytes(np.arange(8, dtype=np.float32).tobytes())
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2, 2], data_location=TensorProto.EXTERNAL)
    for k, v in (("location", "w.bin"), ("offset", "16"), ("length", "16")):
        w.external_data.add(key=k, value=v)
    b = numpy_helper.from_array(np.ones(2, np.float32), "b")
    then = helper.make_graph([helper.make_node("Identity", ["b"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])], initializer=[b])
    other = helper.make_graph([helper.make_node("Constant", [], ["e"], value=numpy_helper.from_array(
        np.zeros(2, np.float32), "z"))], "else", [], [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])])
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1),
         helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2]),
         helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("g", TensorProto.FLOAT, [1, 2]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], initializer=[w])
    path = folder / "model.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())
    return path


def _bundle(folder: Path) -> Path:
    model = _ext_model(folder / "b")
    d = folder / "b" / "test_data_set_0"
    d.mkdir()
    (d / "input_0.pb").write_bytes(numpy_helper.from_array(np.ones((1, 2), np.float32), "x").SerializeToString())
    (d / "output_0.pb").write_bytes(numpy_helper.from_array(np.ones((1, 2), np.float32), "g").SerializeToString())
    return model.parent


def seed_tar(tmp: Path) -> list[Path]:
    from shufflenet.bundle import pack_tar

    folder = _bundle(tmp / "src")
    plain = tmp / "b.tar"
    with tarfile.open(plain, "w") as tar:
        tar.add(folder, arcname="b")
    return [pack_tar(folder, tmp / "b.tar.gz"), plain]


def seed_pb(tmp: Path) -> list[Path]:
    t = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4), "x")
    ext = TensorProto(name="x", data_type=TensorProto.FLOAT, dims=[2], data_location=TensorProto.EXTERNAL)
    for k, v in (("location", "d.bin"), ("offset", "4"), ("length", "8")):
        ext.external_data.add(key=k, value=v)
    (tmp / "a.pb").write_bytes(t.SerializeToString())
    (tmp / "e.pb").write_bytes(ext.SerializeToString())
    return [tmp / "a.pb", tmp / "e.pb"]


def seed_labels(tmp: Path) -> list[Path]:
    (tmp / "l.txt").write_text("tench\ngoldfish\ngreat white shark\n")
    (tmp / "l.json").write_text('["tench", "goldfish", "great white shark"]')
    (tmp / "l.tsv").write_text("index\twnid\tname\n0\tn01440764\ttench\n1\tn01443537\tgoldfish\n")
    return [tmp / "l.txt", tmp / "l.json", tmp / "l.tsv"]


def seed_images(tmp: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    out = []
    for fmt, suffix, kw in (("PNG", "png", {}), ("JPEG", "jpg", {"quality": 80}), ("GIF", "gif", {}),
                            ("BMP", "bmp", {}), ("TIFF", "tif", {}), ("WEBP", "webp", {})):
        path = tmp / f"i.{suffix}"
        (img.convert("P") if fmt == "GIF" else img).save(path, fmt, **kw)
        out.append(path)
    return out


# --------------------------------------------------------------------------- readers


def read_pth(path: Path) -> None:
    from shufflenet._torch_pickle import load_state_dict
    from shufflenet.weights import _plain_state_dict

    _plain_state_dict(load_state_dict(path), path)  # the torch-free reader (base install)


def read_weights(path: Path) -> None:
    from shufflenet.weights import load_weights

    load_weights(path)


def read_onnx(path: Path) -> None:
    from shufflenet.bundle import load_model_checked
    from shufflenet.specs import get_spec
    from shufflenet.weights import weights_from_onnx

    load_model_checked(path)
    try:  # the seed is not a ShuffleNet: reading its initializers ends in "not the same network"
        weights_from_onnx(path, get_spec("shufflenet_v2_x0_5"), 2)
    except ShuffleNetError:
        pass


def read_tar(path: Path) -> None:
    from shufflenet.bundle import find_test_sets, load_model_checked, safe_extract

    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        out = safe_extract(path, Path(tmp) / "x")
        for folder in (p for p in out.iterdir() if p.is_dir()):
            if (folder / "model.onnx").is_file():
                load_model_checked(folder / "model.onnx")
            find_test_sets(folder)


def read_pb(path: Path) -> None:
    from shufflenet.bundle import find_test_sets

    folder = path.parent / "t"
    (folder / "test_data_set_0").mkdir(parents=True, exist_ok=True)
    (folder / "test_data_set_0" / "d.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    (folder / "test_data_set_0" / "input_0.pb").write_bytes(path.read_bytes())
    find_test_sets(folder)


def read_labels(path: Path) -> None:
    from shufflenet.labels import load_labels

    load_labels(path)


def read_images(path: Path) -> None:
    from shufflenet.preprocess import load_image, preprocess_pil
    from shufflenet.specs import Preprocess

    preprocess_pil(load_image(path, draft_size=64), Preprocess(resize=32, crop=28))


READERS = {
    "pth": (seed_pth, read_pth),
    "safetensors": (lambda t: seed_weights(t, ".safetensors"), read_weights),
    "npz": (lambda t: seed_weights(t, ".npz"), read_weights),
    "onnx": (lambda t: [_ext_model(t / "m")], read_onnx),
    "tar": (seed_tar, read_tar),
    "pb": (seed_pb, read_pb),
    "labels": (seed_labels, read_labels),
    "images": (seed_images, read_images),
}

# --------------------------------------------------------------------------- mutations

BOUNDARY = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 2**40, 2**63 - 1, 2**64 - 1]


@st.composite
def mutations(draw, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        op = draw(st.sampled_from(["flip", "byte", "int", "insert", "delete", "dup", "truncate"]))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "int":
            width = draw(st.sampled_from([1, 2, 4, 8]))
            value = draw(st.sampled_from(BOUNDARY)) % (1 << (8 * width))
            data[pos:pos + width] = value.to_bytes(width, draw(st.sampled_from(["little", "big"])))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 64))]
        elif op == "dup":
            n = draw(st.integers(1, 256))
            data[pos:pos] = data[pos:pos + n]
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


class _Alarm(Exception):
    pass


def _alarm(signum, frame):
    raise _Alarm(f"example ran past {EXAMPLE_SECONDS} s")


def fuzz(name: str, examples: int, randomize: bool) -> None:
    seed_fn, reader = READERS[name]
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as tmp:
        seeds = seed_fn(Path(tmp))
        for s in seeds:
            reader(s)  # every seed is a valid file: the reader must accept it
        blobs = [(s.suffix if not s.name.endswith(".tar.gz") else ".tar.gz", s.read_bytes()) for s in seeds]
        # the onnx seed needs its external data beside the mutated model
        extra = {p.name: p.read_bytes() for p in seeds[0].parent.iterdir() if p.suffix == ".bin"}
        counter = iter(range(10**9))

        @settings(max_examples=examples, deadline=None, database=None, derandomize=not randomize,
                  suppress_health_check=list(HealthCheck), print_blob=True)
        @given(st.sampled_from(range(len(blobs))).flatmap(lambda k: st.tuples(st.just(k), mutations(blobs[k][1]))))
        def check(case):
            k, data = case
            folder = Path(tmp) / f"case{next(counter)}"
            folder.mkdir()
            for fname, content in extra.items():
                (folder / fname).write_bytes(content)
            path = folder / f"input{blobs[k][0]}"
            path.write_bytes(data)
            signal.alarm(EXAMPLE_SECONDS)
            try:
                reader(path)
            except ShuffleNetError:
                pass
            finally:
                signal.alarm(0)
                import shutil

                shutil.rmtree(folder, ignore_errors=True)

        check()


def _limit_address_space() -> None:
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + HEADROOM_BYTES, vm + HEADROOM_BYTES))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reader", choices=[*READERS, "all"])
    parser.add_argument("--examples", type=int, default=int(os.environ.get("SHUFFLENET_FUZZ_EXAMPLES", "40")))
    parser.add_argument("--random", action="store_true", help="a new random sequence (default: derandomized)")
    args = parser.parse_args(argv)
    # everything a reader imports is imported before the limit, so it bounds the reading alone
    import shufflenet._torch_pickle, shufflenet.bundle, shufflenet.labels, shufflenet.preprocess  # noqa: E401,F401
    import shufflenet.weights  # noqa: F401

    signal.signal(signal.SIGALRM, _alarm)
    _limit_address_space()
    for name in (READERS if args.reader == "all" else [args.reader]):
        fuzz(name, args.examples, args.random)
        print(f"{name}: {args.examples} examples, every one a success or a ShuffleNetError")
    return 0


if __name__ == "__main__":
    sys.exit(main())
