"""Every example in README.md runs: each python block is executed and its asserts hold; each
genfast command line in a bash block is parsed by the command's own parser (so an option the
README shows exists and takes the value it is given), and `genfast config` is run. The two
install commands (main-command, test-command) are run by .ci/run and by hand in a fresh clone:
they install packages, which a test must not do."""

import importlib
import pathlib
import re
import shlex

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, flags=re.S)
BASH_LINES = [line.split("#")[0].strip() for block in re.findall(r"```bash\n(.*?)```", TEXT, flags=re.S)
              for line in block.splitlines()]
#: "genfast ..." / "python -m genfast ..." / "python benchmarks/bench_X.py ..." / "python -m genfast.bench.X ..."
CLI_LINES = [line for line in BASH_LINES if re.match(r"(genfast |python (-m genfast|benchmarks/bench_))", line)]


def test_readme_has_examples():
    assert len(BLOCKS) >= 2
    assert any(line.startswith("genfast demo") for line in CLI_LINES)
    assert any(line.startswith("genfast bench") for line in CLI_LINES)
    for marker in ("<!-- main-command -->", "<!-- test-command -->"):  # read by .ci/run
        assert re.search(re.escape(marker) + r"\n```bash\n.+\n```", TEXT), marker


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index):
    code = BLOCKS[index]
    if "import torch" in code:
        pytest.importorskip("torch")
    if "genfast.dask" in code:
        pytest.importorskip("distributed")
    exec(compile(code, f"README.md[python block {index}]", "exec"), {})


def _parser_and_args(line):
    """(the argparse parser the command line would use, its arguments)."""
    words = shlex.split(line)
    if words[0] == "genfast" or words[:3] == ["python", "-m", "genfast"]:
        from genfast.__main__ import build_parser

        return build_parser(), words[1:] if words[0] == "genfast" else words[3:]
    if words[:2] == ["python", "-m"]:  # python -m genfast.bench.X
        module, args = words[2], words[3:]
    else:  # python benchmarks/bench_X.py
        assert (README.parent / words[1]).exists(), f"{words[1]} is not in the repository"
        module, args = "genfast.bench." + pathlib.Path(words[1]).stem.removeprefix("bench_"), words[2:]
    return importlib.import_module(module).build_parser(), args


@pytest.mark.parametrize("line", CLI_LINES)
def test_readme_command_line_parses(line):
    parser, args = _parser_and_args(line)
    if "--help" in args:
        args = [a for a in args if a != "--help"]
    parser.parse_args(args)  # exits with status 2 (failing the test) on an unknown option or bad value


def test_readme_config_command_runs(capsys):
    from genfast.__main__ import main

    assert "genfast config" in CLI_LINES
    assert main(["config"]) == 0
    assert "cuda" in capsys.readouterr().out
