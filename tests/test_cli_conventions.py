"""CLI conventions held everywhere: help and shown defaults, -o/--out, -q, exit codes."""

import argparse

import pytest

from shufflenet.cli import build_parser, main


def _subparsers(parser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield (*prefix, name), child
                yield from _subparsers(child, (*prefix, name))


#: demo-data's and train's options are being reworked with the demo (issue 11 item 3); they join
#: this check when that lands
NOT_YET = {("train",), ("demo-data",)}


def test_every_option_has_help_and_shows_its_default():
    problems = []
    for path, parser in _subparsers(build_parser()):
        if path in NOT_YET:
            continue
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            name = "/".join(action.option_strings) or action.dest
            if not action.help:
                problems.append(f"{' '.join(path)} {name}: no help")
            elif action.default not in (None, False, True) and str(action.default) not in action.help:
                problems.append(f"{' '.join(path)} {name}: default {action.default!r} not shown")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("argv", [["export", "shufflenet_v2_x0_5"], ["quantize", "m.onnx", "--calib", "d"],
                                  ["zoo", "build"]])
def test_commands_that_write_take_o_and_out(argv):
    parser = build_parser()
    for flag in ("-o", "--out"):
        args = parser.parse_args([*argv, flag, "target"])
        assert getattr(args, "output", None) == "target" or getattr(args, "out", None) == "target"


@pytest.mark.parametrize("argv", [["classify", "x.jpg"], ["evaluate", "--data", "d"], ["fetch", "--list"],
                                  ["quantize", "m.onnx", "-o", "q.onnx", "--calib", "d"], ["bench", "m.onnx"],
                                  ["zoo", "build", "-o", "z"]])
def test_q_is_quiet(argv):
    assert build_parser().parse_args([*argv, "-q"]).quiet is True


def test_classify_with_nothing_usable_exits_2(tmp_path, capsys):
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    (tmp_path / "bad2.png").write_bytes(b"\x89PNG nope")
    assert main(["classify", str(tmp_path), "--model", "shufflenet_v2_x0_5:random"]) == 2
    err = capsys.readouterr().err
    assert "bad.jpg" in err and "bad2.png" in err and "Traceback" not in err
    assert main(["classify", str(tmp_path / "none.jpg"), "--model", "shufflenet_v2_x0_5:random"]) == 2
