"""CLI conventions held everywhere: help and shown defaults, -o/--out, -q, exit codes."""

import argparse
import io
import subprocess
import sys

import pytest

from shufflenet.cli import COMMANDS, build_parser, main


def _subparsers(parser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield (*prefix, name), child
                yield from _subparsers(child, (*prefix, name))


NOT_YET: set = set()


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
            elif action.default not in (None, False, True) and not any(
                    shown in action.help for shown in {str(action.default), f"{action.default:g}"
                                                       if isinstance(action.default, float) else ""} - {""}):
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


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_serve_port_out_of_range_is_a_usage_error(port, capsys):
    """A port the socket cannot take is refused by the parser (one line, exit 2), not a traceback
    from bind() once the models are loaded."""
    with pytest.raises(SystemExit) as e:
        main(["serve", "--model", "m.onnx", "--port", port])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--port: expected a port number from 0 to 65535" in err and "Traceback" not in err


def test_train_help_shows_trainconfig_defaults():
    """train's parser defaults are None (a resume keeps the run's settings); its help states
    TrainConfig's defaults, which must be the current ones."""
    import dataclasses

    pytest.importorskip("torch")
    from shufflenet.train import TrainConfig

    train = dict(_subparsers(build_parser()))[("train",)]
    helps = {a.dest: a.help for a in train._actions}
    stale = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("data", "out") or f.default is None or f.name not in helps:
            continue
        if f"default {f.default}" not in helps[f.name] and f"default: {f.default}" not in helps[f.name]:
            stale.append(f"--{f.name.replace('_', '-')}: TrainConfig default {f.default!r}, help {helps[f.name]!r}")
    assert not stale, "\n".join(stale)


def test_demo_data_takes_dir_or_out(tmp_path, capsys):
    assert main(["demo-data", "-o", str(tmp_path / "a"), "--per-class", "2", "--classes", "2", "--size", "32", "-q"]) == 0
    assert (tmp_path / "a" / "train").is_dir() and capsys.readouterr().out == ""
    assert main(["demo-data", str(tmp_path / "b"), "-o", str(tmp_path / "c")]) == 2
    assert "two folders" in capsys.readouterr().err


def test_every_command_takes_q():
    missing = [" ".join(path) for path, parser in _subparsers(build_parser())
               if not any(a.option_strings and "-q" in a.option_strings for a in parser._actions)
               and not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)]
    assert not missing, f"no -q on: {missing}"


def test_q_on_list_export_validate(tmp_path, capsys):
    assert main(["list", "-q", "--family", "shufflenet_v2"]) == 0
    assert capsys.readouterr().out.split() == ["shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5",
                                               "shufflenet_v2_x2_0"]
    assert main(["export", "shufflenet_v2_x0_5", "-o", str(tmp_path / "m.onnx"), "--test-data", "1",
                 "--input-size", "64", "-q"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["validate", str(tmp_path / "m.onnx"), "-q"]) == 0
    assert capsys.readouterr().out.strip() == "PASSED"


def _help_text(parser, argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        parser.parse_args(argv)
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_help_built_alone_is_the_full_parsers(name, capsys):
    """`shufflenet X --help` builds only X's arguments: the same help as the whole parser's."""
    argv = [name, "build", "--help"] if name == "zoo" else [name, "--help"]
    alone = _help_text(build_parser([name]), argv, capsys)
    assert alone == _help_text(build_parser(), argv, capsys)
    assert alone.startswith(f"usage: shufflenet {' '.join(argv[:-1])}")
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0 and capsys.readouterr().out == alone



def test_train_arguments_are_trainconfig_fields_or_cli_only():
    """The CLI builds TrainConfig from the arguments given; TrainConfig.from_dict ignores unknown
    keys, so an argument that is neither a field nor named CLI-only would be dropped silently."""
    import dataclasses

    from shufflenet import cli
    from shufflenet.train import TrainConfig

    args = build_parser(["train"]).parse_args(["train", "--data", "d", "-o", "r", "--epochs", "3", "--amp", "bf16"])
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(vars(args)) - fields - cli._TRAIN_CLI_ONLY == set()
    cfg = cli._train_config(args)
    assert (cfg.data, cfg.out, cfg.epochs, cfg.amp, cfg.batch_size) == ("d", "r", 3, "bf16", TrainConfig.batch_size)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal_and_not_quiet(monkeypatch):
    from shufflenet._progress import Bar

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with Bar("off") as bar:
        bar(1, 2)
    assert not bar.on and sys.stderr.getvalue() == ""
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    with Bar("quiet", quiet=True) as bar:
        bar(1, 2)
    assert term.getvalue() == ""
    with Bar("work") as bar:
        for done in (1, 2, 1, 2):  # a second configuration counts again from the start
            bar(done, 2)
        bar.write("a line between")
    assert "work" in term.getvalue() and "2/2" in term.getvalue() and "a line between\n" in term.getvalue()
    with Bar("download", unit="B", unit_scale=True) as bar:  # an unknown total: the bar counts
        bar(3 * 2**20, None)
    assert "3.00MB" in term.getvalue()
