"""Every line of README.md's command blocks runs, offline, against generated data.

The README is parsed (```bash, ```console and ```python blocks); each command goes to a handler
chosen from a table by its program and, for ``shufflenet``, its subcommand. A line that no
handler claims FAILS `test_every_readme_line_has_a_handler`, so the README cannot gain an untested
line. Handlers run the line as written, in a scratch folder holding the files the README names
(generated images, random-weight models); the only substitutions are network-only models (a
zoo artifact or pretrained variant becomes a local random-weight file of the same architecture
and opset) and, in the default tier, the length of the demo training run (`--runslow` runs the
README's training line exactly).

To cover a new kind of line, add an entry to ``PROGRAMS`` or ``SUBCOMMANDS``.
"""

from __future__ import annotations

import ast
import contextlib
import io
import re
import shlex
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Line:
    number: int  # 1-based line in README.md
    block: str  # bash | console | python
    text: str  # the command or statement, prompt and trailing comment removed

    def __str__(self) -> str:
        return f"README.md:{self.number}: {self.text}"


def readme_lines(text: str | None = None) -> list[Line]:
    """The runnable lines of the README's bash, console and python blocks, in order."""
    text = README.read_text("utf-8") if text is None else text
    lines, block = [], None
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("```"):
            block = stripped[3:].strip() or "text" if block is None else None
            continue
        if block is None or not stripped:
            continue
        if block == "console":
            if not stripped.startswith("$ "):
                continue  # program output shown in the README
            lines.append(Line(number, block, stripped[2:].strip()))
        elif block in ("bash", "sh", "shell"):
            if not stripped.startswith("#"):
                lines.append(Line(number, "bash", stripped))
        elif block == "python":
            lines.append(Line(number, block, raw.rstrip()))
    return lines


def commands(line: Line) -> list[list[str]]:
    """A shell line -> its commands (``a && b`` is two), each as argv, comments dropped."""
    argv = shlex.split(line.text, comments=True)
    out, current = [], []
    for word in argv:
        if word == "&&":
            out.append(current)
            current = []
        else:
            current.append(word)
    out.append(current)
    if any(not c for c in out) or any(w in {"|", ";", "||", ">", "<", "&"} for c in out for w in c):
        raise AssertionError(f"{line}: only plain commands joined by && are supported here")
    return out


# --------------------------------------------------------------------------- the workspace


class Workspace:
    """A scratch folder with every file the README names, and the options of this run."""

    def __init__(self, root: Path, exact: bool) -> None:
        self.root, self.exact = root, exact
        self.outputs: list[str] = []

    def make_inputs(self) -> None:
        from shufflenet.onnx_export import export_onnx, save_model
        from shufflenet.quantize import QuantizeOptions, quantize
        from shufflenet.synthetic import synthetic_images
        from shufflenet.weights import random_weights, save_weights

        r = self.root
        images = synthetic_images(28, seed=11)
        for folder, part in (("photos", images[:6]), ("images", images[6:18])):
            (r / folder).mkdir()
            for i, img in enumerate(part):
                img.save(r / folder / f"{folder}_{i}.jpg", quality=90)
        images[18].save(r / "a.jpg")
        images[19].save(r / "cat.jpg")
        (r / "val").mkdir()  # the ImageNet val layout: a flat folder and 'filename index' lines
        names = []
        for i, img in enumerate(images[20:28]):
            img.save(r / "val" / f"ILSVRC2012_val_{i:08d}.JPEG", quality=90)
            names.append(f"ILSVRC2012_val_{i:08d}.JPEG {(i * 97) % 1000}")
        (r / "val.txt").write_text("\n".join(names) + "\n")
        save_model(export_onnx("shufflenet_v2_x0_5", weights="random:3", opset=13), r / "m.onnx")
        save_model(export_onnx("shufflenet_v2_x0_5", weights="random:4", opset=13), r / "model.onnx")
        quantize(r / "m.onnx", r / "m-int8.onnx", r / "images",
                 options=QuantizeOptions(calib_count=8, measure_latency=False))
        save_weights(random_weights("shufflenet_v2_x1_0", seed=5), r / "w.safetensors")

    def offline_model(self, spec: str) -> str:
        """A model argument that would need the network -> a local file or VARIANT:random."""
        from shufflenet.onnx_export import export_onnx, save_model
        from shufflenet.specs import artifacts, list_variants

        if (self.root / spec).exists() or ":" in spec:
            return spec
        zoo = {a.name: a for a in artifacts() if a.kind == "zoo-onnx"}
        if spec in zoo:  # the same architecture and opset, random weights
            art = zoo[spec]
            path = self.root / "_offline" / f"{spec}.onnx"
            if not path.exists():
                path.parent.mkdir(exist_ok=True)
                save_model(export_onnx(art.variant, weights="random:0", opset=art.opset or 12), path)
            if art.quantization:
                pytest.fail(f"no offline stand-in for the quantized zoo model {spec}")
            return str(path)
        if spec in list_variants():
            return f"{spec}:random"
        return spec


# --------------------------------------------------------------------------- handlers


def _cli(argv: list[str], ws: Workspace) -> None:
    """Run ``shufflenet ARGV`` in this process; the line fails unless it exits 0."""
    from shufflenet.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    assert code == 0, f"shufflenet {shlex.join(argv)} exited {code}\n{out.getvalue()}\n{err.getvalue()}"


def _with_offline_models(*options: str):
    """A handler that swaps network-only values of ``options`` for local stand-ins, then runs."""
    def handler(argv: list[str], ws: Workspace) -> None:
        argv = list(argv)
        for i, word in enumerate(argv[:-1]):
            if word in options:
                argv[i + 1] = ws.offline_model(argv[i + 1])
        _cli(argv, ws)
    return handler


def _bounded(extra: list[str]):
    """A handler for a long line: run as written with --runslow, else with ``extra`` appended
    (options that shorten the run, e.g. fewer epochs; never other paths or models)."""
    def handler(argv: list[str], ws: Workspace) -> None:
        _cli(argv if ws.exact else [*argv, *extra], ws)
    return handler


def _swap_models(argv: list[str], ws: Workspace, *options: str) -> list[str]:
    argv = list(argv)
    for i, word in enumerate(argv[:-1]):
        if word in options:
            argv[i + 1] = ws.offline_model(argv[i + 1])
    return argv


def _serve(argv: list[str], ws: Workspace) -> None:
    """`shufflenet serve ...`: a long-running server, started as written (its port included),
    probed until /v2/health/ready answers 200, then stopped."""
    argv = _swap_models(argv, ws, "--model")
    port = argv[argv.index("--port") + 1] if "--port" in argv else "8000"
    _long_running([sys.executable, "-m", "shufflenet", *argv], ready=f"http://127.0.0.1:{port}/v2/health/ready",
                  ws=ws, timeout=180)


#: a private network (loopback only) and PID namespace: Ray binds to 127.0.0.1 in there and
#: everything it starts dies with the namespace (as tests/test_ray.py's cluster)
_PRIVATE = ["unshare", "--net", "--pid", "--fork", "--mount", "--mount-proc", "--kill-child",
            "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]


def _classify(argv: list[str], ws: Workspace) -> None:
    """`classify ... --engine ray` starts a local Ray: run it in a private network namespace."""
    argv = _swap_models(argv, ws, "--model")
    if "--engine" not in argv or argv[argv.index("--engine") + 1] != "ray":
        return _cli(argv, ws)
    import os
    import shutil

    pytest.importorskip("ray")
    probe = subprocess.run([*_PRIVATE, "true"], capture_output=True, text=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"the README's Ray line must run in CI: {probe.stderr if probe else 'no unshare'}")
        pytest.skip("cannot make a private network namespace for Ray here")
    import secrets
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="rdme", dir="/tmp"))  # short: Ray's socket paths
    (tmp / "home").mkdir()
    # as tests/ray_sandbox.py: a token of this run only, HOME and Ray's temp dir in here, so
    # nothing is read from or written to ~/.ray or /tmp/ray
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32), "HOME": str(tmp / "home"), "RAY_TMPDIR": str(tmp)}
    try:
        done = subprocess.run([*_PRIVATE, sys.executable, "-m", "shufflenet", *argv], cwd=ws.root, env=env,
                              capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert done.returncode == 0, f"shufflenet {shlex.join(argv)} exited {done.returncode}\n{done.stderr[-3000:]}"


def _apt(argv: list[str], ws: Workspace) -> None:
    """`apt-get update` / `apt-get install -y PKG`: .ci/run installs these; check they are here."""
    import shutil

    assert argv[1] in ("update", "install"), argv
    for pkg in (w for w in argv[2:] if not w.startswith("-")):
        assert shutil.which(pkg), f"{pkg} is not installed here (the README's test command installs it)"


def _long_running(cmd: list[str], *, ready: str, ws: Workspace, timeout: float = 60.0) -> None:
    """Start a server command, wait until ``ready`` (a URL on 127.0.0.1) answers 200, stop it."""
    import time

    proc = subprocess.Popen(cmd, cwd=ws.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, f"{shlex.join(cmd)} exited {proc.returncode}: {proc.stdout.read()}"
            try:
                with _REAL_URLOPEN(ready, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, f"{shlex.join(cmd)}: {ready} not ready in {timeout:.0f} s"
            time.sleep(0.2)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


#: what every ``shufflenet SUBCOMMAND`` line runs through
SUBCOMMANDS = {
    "list": _cli,
    "export": _cli,
    "validate": _cli,
    "fetch": _cli,  # --list reads the (empty, scratch) cache only
    "classify": _classify,
    "evaluate": _with_offline_models("--model", "--compare"),
    "quantize": _cli,
    "bench": _cli,
    "zoo": _bounded(["--variants", "shufflenet-v2-12-qdq"]),  # the default tier builds one row (+ its source)
    "demo-data": _bounded(["--per-class", "8", "--size", "64"]),
    "train": _bounded(["--epochs", "1", "--img-size", "56", "--batch-size", "16"]),
    "serve": _serve,
}


def _shufflenet(argv: list[str], ws: Workspace) -> None:
    sub = argv[1] if len(argv) > 1 else ""
    handler = SUBCOMMANDS.get(sub)
    if handler is None:
        pytest.fail(f"no handler for `shufflenet {sub}`: add one to SUBCOMMANDS in tests/test_readme.py")
    handler(argv[1:], ws)


def _venv(argv: list[str], ws: Workspace) -> None:
    """`python3 -m venv DIR`: make one (without pip, which would need the network)."""
    assert argv[1:3] == ["-m", "venv"] and len(argv) == 4, argv
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(ws.root / argv[3])], check=True)


def _pip(argv: list[str], ws: Workspace) -> None:
    """`pip install ...`: this suite runs in the environment that line made; check that it says
    what is installed here (pinned versions, extras that pyproject declares)."""
    import importlib.metadata as md
    import re
    import tomllib

    assert argv[1] == "install", argv
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    words = [w for w in argv[2:] if w not in ("-q", "--quiet")]
    for i, word in enumerate(words):
        if word == "-e":
            continue
        if i and words[i - 1] == "-e" or word.startswith("."):
            m = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", word)
            assert m, f"unexpected install target {word!r}"
            for extra in filter(None, (m.group(1) or "").split(",")):
                assert extra in project["optional-dependencies"], f"pyproject declares no extra {extra!r}"
            assert md.version(project["name"]) == project["version"]
        else:
            name, _, version = word.partition("==")
            assert version, f"{word}: pin a version (a bare name may pull another build)"
            assert md.version(name).split("+")[0] == version, f"{name} {md.version(name)} installed, README says {version}"


def _python(argv: list[str], ws: Workspace) -> None:
    """`python -m pytest ...`: the README's test command is the one CI runs (.ci/run)."""
    assert argv[1:3] == ["-m", "pytest"], argv
    ci = (ROOT / ".ci" / "run").read_text()
    assert shlex.join([".venv/bin/python", *argv[1:]]) in ci, f"{shlex.join(argv)} is not what .ci/run runs"


#: subcommands whose README lines run only in the slow tier (--runslow; CI runs it)
SLOW_ONLY = {"zoo"}  # `zoo build` builds and validates nine models (~30 s idle, minutes when busy)

#: a program (its path as written, or its name) -> handler(argv, workspace)
PROGRAMS = {
    "shufflenet": _shufflenet,
    "python3": _venv,
    "apt-get": _apt,
    "pip": _pip,
    "python": _python,
}


def handler_for(argv: list[str]):
    """The handler of one command: by the program's full spelling, then by its base name
    (``.venv/bin/shufflenet`` is ``shufflenet``)."""
    return PROGRAMS.get(argv[0]) or PROGRAMS.get(Path(argv[0]).name)


# --------------------------------------------------------------------------- the tests


_REAL_URLOPEN = urllib.request.urlopen


@pytest.fixture(scope="module")
def readme_inputs(tmp_path_factory) -> Path:
    """The files the README names, made once per module (each test works on a copy)."""
    root = tmp_path_factory.mktemp("readme-inputs")
    Workspace(root, exact=False).make_inputs()
    return root


@pytest.fixture
def workspace(tmp_path, monkeypatch, request, readme_inputs):
    """A scratch folder with the README's files; the network is cut (only 127.0.0.1 answers)."""
    import shutil

    def offline(url, *args, **kwargs):
        target = url if isinstance(url, str) else url.full_url
        if not target.startswith(("http://127.0.0.1", "http://localhost", "file://")):  # file: not network
            raise AssertionError(f"a README line tried the network: {target}")
        return _REAL_URLOPEN(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setenv("SHUFFLENET_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("SHUFFLENET_MIRROR", raising=False)
    monkeypatch.chdir(tmp_path)
    shutil.copytree(readme_inputs, tmp_path, dirs_exist_ok=True)
    return Workspace(tmp_path, exact=request.config.getoption("--runslow"))


def test_readme_parses_into_lines():
    lines = readme_lines()
    blocks = {line.block for line in lines}
    assert {"bash", "console", "python"} <= blocks, blocks
    assert sum(line.block == "console" for line in lines) >= 10
    sample = "```console\n$ shufflenet list   # a comment\nnot a command\n```\n```python\nx = 1\n```\n"
    assert [(x.block, x.text) for x in readme_lines(sample)] == [("console", "shufflenet list   # a comment"),
                                                                ("python", "x = 1")]
    assert commands(Line(1, "console", "a b && c 'd e'  # note")) == [["a", "b"], ["c", "d e"]]


def test_every_readme_line_has_a_handler():
    """A README line that nothing here can run fails: add a handler with the line."""
    missing = []
    for line in readme_lines():
        if line.block == "python":
            ast.parse(line.text.strip() or "pass")
            continue
        for argv in commands(line):
            h = handler_for(argv)
            if h is None or (h is _shufflenet and (len(argv) < 2 or argv[1] not in SUBCOMMANDS)):
                missing.append(str(line))
    assert not missing, "README lines without a handler:\n" + "\n".join(missing)


def _run_lines(ws: Workspace, block: str) -> None:
    for line in readme_lines():
        if line.block != block:
            continue
        for argv in commands(line):
            h = handler_for(argv)
            assert h is not None, f"{line}: no handler"
            try:
                h(argv, ws)
            except AssertionError as e:
                raise AssertionError(f"{line}\n{e}") from None


def test_readme_console_lines_run(workspace):
    """The console block, line by line in order (later lines use earlier lines' outputs)."""
    _run_lines(workspace, "console")
    r = workspace.root
    for written in ("out/shufflenet-3.tar.gz", "v2.onnx", "m-int8.onnx", "sqnr.png", "run/best.safetensors",
                    "mine.onnx", "fast.onnx", "fast-int8.onnx"):
        assert (r / written).exists(), written


def test_readme_install_lines_hold(workspace):
    """The bash blocks: install lines match this environment, the test command is CI's, and
    the zoo build runs (in the slow tier: it builds nine models)."""
    for line in readme_lines():
        if line.block != "bash":
            continue
        for argv in commands(line):
            if Path(argv[0]).name == "shufflenet" and argv[1] in SLOW_ONLY and not workspace.exact:
                continue
            try:
                handler_for(argv)(argv, workspace)
            except AssertionError as e:
                raise AssertionError(f"{line}\n{e}") from None
    if workspace.exact:
        assert (workspace.root / "zoo" / "manifest.json").exists()


def test_readme_python_lines_run(workspace):
    """The python block, statement by statement in one namespace."""
    namespace: dict = {}
    for line in readme_lines():
        if line.block != "python":
            continue
        try:
            exec(compile(line.text.strip(), f"README.md:{line.number}", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"{line}\n{type(e).__name__}: {e}") from None
    assert namespace["spec"].num_params == 2278604
    assert namespace["x"].shape == (1, 3, 224, 224)


def test_readme_links_every_doc_and_every_link_resolves():
    """Each file of docs/ is linked from the README, and every relative link in the README and
    the docs names a file that exists (a renamed doc or module path breaks this test)."""
    text = README.read_text()
    docs = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))
    assert [d for d in docs if f"]({d})" not in text] == []
    broken = []
    for page in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []
