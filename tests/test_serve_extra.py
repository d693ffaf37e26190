"""`shufflenet serve` on an install without the serve extra: one line, exit 2, no model loaded."""

import sys

from shufflenet.cli import main


def test_serve_without_the_extra_says_so(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "starlette", None)  # as on an install without [serve]
    assert main(["serve", "--model", "no-such-model.onnx"]) == 2  # the extra is checked first
    err = capsys.readouterr().err
    assert err.startswith("shufflenet serve: error:") and "pip install 'shufflenet[serve]'" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_import_shufflenet_serve_needs_no_extra():
    import subprocess

    code = ("import sys; sys.modules['starlette'] = None; import shufflenet.serve, shufflenet; "
            "print(sorted(m for m in ('uvicorn', 'prometheus_client') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
