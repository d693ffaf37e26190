"""Every reader of untrusted files, fuzzed (issue 13): random mutations of valid files end in
success or a ShuffleNetError, under an address-space limit and a per-example alarm, each reader
in its own process (tests/fuzz_readers.py). The default example count keeps CI fast; a longer
run: ``SHUFFLENET_FUZZ_EXAMPLES=2000 python tests/fuzz_readers.py all --random`` (docs/limits.md)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
EXAMPLES = int(os.environ.get("SHUFFLENET_FUZZ_EXAMPLES", "30"))


@pytest.mark.parametrize("reader", ["pth", "safetensors", "npz", "onnx", "tar", "pb", "labels", "images"])
def test_reader_survives_mutations(reader):
    src = str(HERE.parent / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
           "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(HERE / "fuzz_readers.py"), reader, "--examples", str(EXAMPLES)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    assert f"{reader}: {EXAMPLES} examples" in proc.stdout
