"""Every python example in README.md runs, and its asserts hold."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index):
    code = BLOCKS[index]
    if "import torch" in code:
        pytest.importorskip("torch")
    if "genfast.dask" in code:
        pytest.importorskip("distributed")
    exec(compile(code, f"README.md[python block {index}]", "exec"), {})
