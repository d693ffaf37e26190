"""The base install: import without torch, the CLI front."""

import json
import subprocess
import sys

import pytest

from shufflenet.cli import main


def test_import_does_not_load_torch():
    code = "import sys, shufflenet; shufflenet.random_weights('shufflenet_v2_x0_5'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_help_and_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "shufflenet", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "list" in out.stdout


def test_cli_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "shufflenet_v2_x1_0" in out and "2,278,604" in out and "144.9M" in out
    assert main(["list", "--json", "--family", "shufflenet_v1_caffe2"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["shufflenet_v1_caffe2"] and rows[0]["params"] == 1_393_320


def test_cli_usage_errors_exit_2(capsys):
    assert main([]) == 2
    with pytest.raises(SystemExit) as e:
        main(["nope"])
    assert e.value.code == 2


def test_commands_that_need_torch_say_so_without_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # as on the base install
    for mod in [m for m in sys.modules if m.startswith("shufflenet.torch_models")]:
        monkeypatch.delitem(sys.modules, mod)
    (tmp_path / "d" / "a").mkdir(parents=True)
    (tmp_path / "d" / "b").mkdir()
    assert main(["train", "--data", str(tmp_path / "d"), "-o", str(tmp_path / "r")]) == 2
    assert main(["export", "shufflenet_v2_x0_5", "--via", "torch", "-o", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("pip install 'shufflenet[torch]'") == 2 and "Traceback" not in err
    assert err.count("pip install -e '.[torch]'") == 2  # from a checkout, too
    assert len(err.strip().splitlines()) == 2


def test_dir_shows_the_public_api():
    import shufflenet

    listed = dir(shufflenet)
    for name in ("Classifier", "export_onnx", "build_model", "resolve_model", "preprocess_image", "get_spec"):
        assert name in listed and getattr(shufflenet, name)
    assert not [n for n in listed if n.startswith("_") and n != "__version__"]


HEAVY = ("onnx", "numpy", "PIL", "onnxruntime", "torch", "tqdm")


def _light_run(argv: list[str]) -> tuple[str, str]:
    """Run `shufflenet ARGV` in a fresh interpreter: (stdout, "exit-code [heavy modules loaded]")."""
    code = ("import runpy, sys\n"
            f"sys.argv = ['shufflenet', *{argv!r}]\n"
            "try:\n"
            "    runpy.run_module('shufflenet', run_name='__main__')\n"
            "except SystemExit as e:\n"
            "    code = e.code\n"
            f"heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
            "print(code, heavy, file=sys.stderr)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout, out.stderr.strip()


@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_version_and_help_do_not_load_onnx_numpy_or_pillow(flag):
    """`shufflenet --version` and `--help` build only the top-level parser (one line per command
    from a static table): none of the heavy base imports."""
    from shufflenet import __version__
    from shufflenet.cli import COMMANDS

    stdout, status = _light_run([flag])
    assert status == "0 []"
    if flag == "--version":
        assert stdout.strip() == f"shufflenet {__version__}"
    else:
        assert all(name in stdout for name in COMMANDS)
    # the real entry point answers the same
    out = subprocess.run([sys.executable, "-m", "shufflenet", flag], capture_output=True, text=True)
    assert out.returncode == 0 and (out.stdout.strip() == f"shufflenet {__version__}" if flag == "--version"
                                    else "usage: shufflenet" in out.stdout)


def test_command_help_loads_no_onnx_numpy_or_pillow():
    """Choices and defaults come from shufflenet.options: a command's --help needs none of the
    heavy modules (export's alone reads the newest opset from the installed onnx)."""
    from shufflenet.cli import COMMANDS

    for name in COMMANDS:
        if name != "export":
            stdout, status = _light_run([name, "--help"])
            assert status == "0 []" and f"shufflenet {name}" in stdout, (name, status)


def test_options_are_plain_python():
    """shufflenet.options (choices and defaults for the library and the CLI) imports nothing heavy."""
    code = ("import sys, shufflenet.options\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_options_defaults_are_among_their_choices():
    """A default written in options beside its choice list is one of them (a typo there would be
    shown in --help and only fail when used)."""
    from shufflenet import options as o
    from shufflenet.specs import get_spec

    assert o.QUANTIZE_DEFAULTS["format"] in o.QUANTIZE_FORMATS
    assert o.QUANTIZE_DEFAULTS["calib_method"] == o.CALIB_METHODS[0]  # the one tuning tries first
    assert o.TRAIN_DEFAULTS["optimizer"] in o.OPTIMIZERS and o.TRAIN_DEFAULTS["amp"] in o.AMP_MODES
    assert o.DEMO_DEFAULTS["difficulty"] in o.DEMO_DIFFICULTIES
    assert 2 <= o.DEMO_DEFAULTS["classes"] <= len(o.DEMO_CLASSES) == len(set(o.DEMO_CLASSES))
    assert o.MIN_OPSET <= o.DEFAULT_OPSET and o.INPUT_SIZES[0] < o.INPUT_SIZES[1]
    assert o.BENCH_BACKENDS[0] == "onnxruntime" and o.ENGINES[0] == "local"  # the base install's
    for name in (o.DEFAULT_MODEL, o.TRAIN_DEFAULTS["variant"]):
        get_spec(name)  # a registered variant


def test_every_option_is_read_by_the_library_or_the_cli():
    """options holds shared choices and defaults only: every name it exports is read by another
    module, and it exports every constant it defines."""
    import re
    from pathlib import Path

    from shufflenet import options

    defined = {n for n in vars(options) if n.isupper()}
    assert set(options.__all__) == defined
    src = Path(options.__file__).parent
    text = "\n".join(p.read_text() for p in src.glob("*.py") if p.name != "options.py")
    unread = sorted(n for n in defined if not re.search(rf"\b{n}\b", text))
    assert not unread, unread


def test_classify_threads_policy():
    from shufflenet.runtime import classify_threads

    assert classify_threads(3, files=100, batch_size=16) == 3  # asked for: kept
    assert classify_threads(None, files=100, batch_size=16) == 1  # many files: one-thread sessions, every core busy
    assert classify_threads(None, files=16, batch_size=16) is None  # one batch: ONNX Runtime's own threads
