"""One command line for the four stages (issue 14 item 2): options, inputs and overrides in any order, and every
example command shown in a `--help` epilog or a README code block parses and resolves its config."""
import mammo.runtime  # noqa: F401  (must stay the first import)

import argparse
import importlib
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from mammo import cli
from mammo.config import load_config, to_dict

REPO = Path(__file__).resolve().parent.parent
STAGES = ("pipeline", "detector", "classifier", "tuning")
SCRIPTS = {f"mammo-{s}": s for s in STAGES}  # console entry points of pyproject.toml
INPUT_COMMANDS = {"pipeline": ("infer", "export-rois", "serve"), "detector": ("predict",)}


# --- collecting the documented commands -----------------------------------------------------------------------
def shell_commands(text: str):
    """Each command of a block of shell text (continuations joined, comments dropped, `a && b` split) that
    runs a stage or a benchmark script: (program, argv)."""
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            segment, words = words[:cut], words[cut + 1:]
            if segment and Path(segment[0]).name in SCRIPTS:
                yield SCRIPTS[Path(segment[0]).name], segment[1:]
            elif len(segment) > 2 and Path(segment[0]).name.startswith("python"):
                if segment[1] == "-m" and segment[2] in STAGES:
                    yield segment[2], segment[3:]
                elif segment[1].startswith("benchmarks/"):
                    yield segment[1], segment[2:]


def readme_commands():
    """Commands of the README's shell blocks, and inline `python ...` spans that give more than a stage's name."""
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh|console)\n(.*?)```", text, flags=re.S)
    spans = re.findall(r"`((?:python|mammo-)[^`\n]*)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return [(p, a) for chunk in blocks + spans for p, a in shell_commands(chunk) if a]


def epilog_commands():
    out = []
    for stage in STAGES:
        parser = importlib.import_module(f"{stage}.__main__").build_parser()
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        epilogs = {parser.epilog, *(p.epilog for p in subparsers.choices.values())} - {None}
        out += [c for e in sorted(epilogs) for c in shell_commands(e)]
    return out


def _cases(commands, where):
    seen = {}
    for program, argv in commands:
        seen.setdefault((program, tuple(argv)), None)
    return [pytest.param(p, list(a), id=f"{where}: {Path(p).stem} {' '.join(a)}"[:150]) for p, a in seen]


# --- resolving one command without doing the work ---------------------------------------------------------------
class _Parsed(Exception):
    def __init__(self, namespace):
        self.namespace = namespace


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working folder where the repository's configs/ resolve and config files named by examples exist."""
    for name in ("configs", "detector"):
        (tmp_path / name).symlink_to(REPO / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _ensure_config(path: str):
    """A config the example names but an earlier command would have written (runs/.../best.yaml): the default."""
    if path and not Path(path).exists() and path.endswith((".yaml", ".yml")):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(yaml.safe_dump(to_dict(load_config())))


def resolve(program: str, argv: list[str]):
    """Parse `argv` as `program` does and resolve its config; returns the config (or the parsed namespace of a
    benchmark script). Raises what the real command would raise at these steps (SystemExit, ConfigError)."""
    if program.startswith("benchmarks/"):  # plain argparse scripts: stop them right after parsing
        spec = importlib.util.spec_from_file_location(Path(program).stem, REPO / program)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return _parsed_by(module.main, argv)
    if program == "classifier" and argv[:1] == ["weights"]:
        from mammo.weights_store import cli as weights_cli

        return _parsed_by(weights_cli, argv[1:])
    if program == "classifier" and argv[:1] == ["export-onnx"]:
        from classifier.export_onnx import cli as export_cli

        return _parsed_by(export_cli, argv[1:])
    main = importlib.import_module(f"{program}.__main__")
    args, overrides, inputs = cli.parse(main.build_parser(), argv)
    assert not inputs or args.command in INPUT_COMMANDS.get(program, ()), f"inputs {inputs} not taken"
    for name in ("config", "data"):
        _ensure_config(getattr(args, name, None))
    if program == "tuning":
        return main.config_for(args, overrides)
    if program == "detector" and getattr(args, "mode", None):
        overrides.append(f"detector.mode={args.mode}")
    if program == "pipeline" and getattr(args, "data", None) and args.data.endswith(".yaml"):
        load_config(args.data, overrides)
    return load_config(args.config, overrides)


def _parsed_by(main, argv):
    original = argparse.ArgumentParser.parse_args

    def stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    saved = sys.argv
    sys.argv = ["prog", *argv]  # for scripts whose main() reads sys.argv
    argparse.ArgumentParser.parse_args = stop
    try:
        main(argv) if main.__code__.co_argcount else main()
    except _Parsed as parsed:
        return parsed.namespace
    finally:
        argparse.ArgumentParser.parse_args = original
        sys.argv = saved
    raise AssertionError(f"{main} finished without parsing a command line")


# --- the tests ----------------------------------------------------------------------------------------------------
def test_documentation_has_examples_of_every_stage():
    programs = {p for p, _ in readme_commands() + epilog_commands()}
    assert set(STAGES) <= programs and any(p.startswith("benchmarks/") for p in programs)


@pytest.mark.parametrize("program,argv", _cases(readme_commands(), "README") + _cases(epilog_commands(), "--help"))
def test_every_documented_command_parses_and_resolves_its_config(program, argv, workdir):
    resolve(program, argv)


def test_overrides_after_options_and_between_inputs():
    """The command of the issue: 'unrecognized arguments' before this change."""
    from pipeline.__main__ import build_parser

    args, overrides, inputs = cli.parse(build_parser(), ["infer", "scans/", "run.seed=3", "extra.dcm", "list.csv",
                                                         "--out", "results/", "pipeline.aggregate=noisy_or",
                                                         "more.png", "--overwrite"])
    assert inputs == ["scans/", "extra.dcm", "list.csv", "more.png"]
    assert overrides == ["run.seed=3", "pipeline.aggregate=noisy_or"]
    assert args.out == "results/" and args.overwrite


def test_list_options_leave_overrides_behind_them():
    from classifier.__main__ import build_parser as classifier_parser
    from pipeline.__main__ import build_parser as pipeline_parser

    args, overrides, _ = cli.parse(pipeline_parser(), ["benchmark", "--folder-sizes", "10", "100", "run.name=x"])
    assert args.folder_sizes == [10, 100] and overrides == ["run.name=x"]
    args, overrides, _ = cli.parse(classifier_parser(), ["predict", "--crops", "a.png", "b.png", "run.seed=1"])
    assert args.crops == ["a.png", "b.png"] and overrides == ["run.seed=1"]


def test_an_existing_file_with_equals_in_its_name_is_an_input(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("scan=1.png").write_bytes(b"")
    assert cli.split_args(["scan=1.png", "a.b=1", "dir/x=1.png"]) == (["a.b=1"], ["scan=1.png", "dir/x=1.png"])


@pytest.mark.parametrize("stage,argv,needle", [
    ("pipeline", ["infer", "--out", "o", "--bogus"], "unrecognized arguments: --bogus"),
    ("classifier", ["train", "scan.png"], "train takes no inputs"),
    ("tuning", ["best", "--study", "s", "stray"], "best takes no inputs"),
    ("detector", ["evaluate", "--weights", "w.pt", "x.dcm"], "evaluate takes no inputs"),
    ("pipeline", ["benchmark", "--folder-sizes", "ten"], "invalid value 'ten'"),
    ("pipeline", ["benchmark", "--folder-sizes", "10", "100000000"], "allowed 1 to 1000"),
    ("pipeline", ["benchmark", "--repeats", "0"], "allowed 1 to 100"),
    ("pipeline", ["evaluate", "--predictions", "p", "--threshold", "nan"], "allowed 0.0 to 1.0"),
])
def test_usage_errors_are_exit_2(stage, argv, needle, capsys):
    main = importlib.import_module(f"{stage}.__main__").main
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and needle in capsys.readouterr().err


@pytest.mark.slow
def test_the_issue_example_runs_for_real_on_tiny_inputs(tiny_bundle, tmp_path):
    """`python -m pipeline infer scans/ extra.dcm list.csv --out results/ pipeline.aggregate=noisy_or`, as shown in
    `--help`, on a folder, a DICOM and a CSV list of tiny synthetic mammograms."""
    import json
    import subprocess

    import numpy as np
    from PIL import Image

    from dicom_fixtures import write_dicom
    from mammo.synthetic import write_synthetic_dataset

    argv = next(a for p, a in epilog_commands() if p == "pipeline" and "extra.dcm" in a)
    pngs = sorted((write_synthetic_dataset(tmp_path / "data", 3, seed=3, n_lesions=1).parent / "images").glob("*.png"))
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "a.png").write_bytes(pngs[0].read_bytes())
    write_dicom(tmp_path / "extra.dcm", (np.asarray(Image.open(pngs[1])) >> 4).astype(np.uint16))
    (tmp_path / "list.csv").write_text(f"path\n{pngs[2]}\n")
    proc = subprocess.run([sys.executable, "-m", "pipeline", *argv, "--models", str(tiny_bundle)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=900,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [r for r in map(json.loads, map(Path.read_text, (tmp_path / "results").glob("*.json"))) if "lesions" in r]
    assert len(results) == 3 and {r["aggregate"] for r in results} == {"noisy_or"}
    assert yaml.safe_load((tmp_path / "results" / "config.yaml").read_text())["pipeline"]["aggregate"] == "noisy_or"


@pytest.mark.slow
def test_pip_install_gives_console_commands_with_configs_and_models(tmp_path):
    """`pip install .` (no dependencies: the test venv has them) -> mammo-* commands that work from any folder,
    reading the installed configs and shipped models, writing runs under the working folder."""
    import os
    import shutil
    import subprocess

    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "runs", "build", "*.egg-info", "__pycache__",
                                                             ".pytest_cache"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--target", str(target), str(src)], check=True, timeout=600)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    env.pop("MAMMO_RUN_DIR", None)
    for stage in STAGES:
        proc = subprocess.run([str(target / "bin" / f"mammo-{stage}"), "--help"], cwd=work, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and f"mammo-{stage}" in proc.stdout and "examples:" in proc.stdout, proc.stderr
    probe = ("import mammo, mammo.runtime as r, mammo.config as c, pipeline.demo as d, pipeline.models as m\n"
             "print(mammo.__file__, r.RUN_ROOT, c.load_config().pipeline.aggregate, m.read_bundle(d.SHIPPED, "
             "require_manifest=True).threshold)")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    where, runs, aggregate, threshold = proc.stdout.split()
    assert Path(where).is_relative_to(target) and Path(runs) == work.resolve() / "runs" and aggregate == "max"
    assert 0 < float(threshold) < 1
    bad = subprocess.run([str(target / "bin" / "mammo-pipeline"), "infer", "--out", "o", "run.threads=0"], cwd=work,
                         env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: run.threads") and not (work / "o").exists()
