"""The README's usage section and docs/serving.md's examples run as written, in order,
against a real server on the shipped model (`python -m server` on a loopback port), and
every output they show is the real one. Also: the runner's reading of the documents,
the shipped example images, and the README's first two commands."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from docs import examples, runner
from training.shapes.examples import EXAMPLES

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ran():
    """{document: its steps with their real outputs}; a fresh server per document."""
    out = {}
    for name in examples.DOCUMENTS:
        with examples.shipped_server() as url:
            out[name] = examples.run_document(name, url)[1]
    return out


@pytest.mark.parametrize("name", list(examples.DOCUMENTS))
def test_examples_run_and_show_their_real_outputs(ran, name):
    steps = ran[name]
    stale = examples.problems(name, steps)
    assert not stale, "\n".join(stale) + f"\n\nregenerate the outputs with: {examples.REGENERATE}"
    shown = [s for s in steps if s.shown is not None]
    routes = {route for s in shown for route in ("/caption", "/vqa", "/retrieve", "c.caption", "c.vqa", "c.retrieve",
                                                 "client caption", "client vqa", "client retrieve") if route in s.code}
    assert len(shown) >= 10 and {"/caption", "/vqa", "/retrieve"} <= routes, "the examples show too little"


def test_readme_usage_covers_multipart_body_files_the_client_and_the_cli(ran):
    code = "\n".join(s.code for s in ran["README.md"])
    assert "-F image=@examples/" in code and "--data-binary @" in code
    assert '-d "{\\"image\\": \\"$IMG\\"}"' not in code  # the pattern that fails on photos is only warned about
    assert "from client import Client" in code and "python -m client" in code
    files = set(re.findall(r"examples/[\w-]+\.png", code))
    assert files == {f"examples/{ex.name}.png" for ex in EXAMPLES}
    readme = (REPO / "README.md").read_text()
    for ex in EXAMPLES:  # each image is explained where it is used
        assert f"| `examples/{ex.name}.png` | {ex.caption()} |" in readme


def test_readme_keeps_its_two_commands_and_ci_runs_the_test_command():
    readme = (REPO / "README.md").read_text()
    serve = readme.index("    bash setup.sh && .venv/bin/python -m server\n")
    tests = readme.index("    bash setup.sh && .venv/bin/python -m pytest -q\n")
    assert serve < tests < readme.index("## Use it")
    assert "bash setup.sh && .venv/bin/python -m pytest -q" in (REPO / ".ci" / "run").read_text()
    assert examples.REGENERATE in readme and examples.REGENERATE in (REPO / "docs" / "serving.md").read_text()


def test_shipped_examples_are_the_renderers_images(tmp_path):
    from training.shapes.examples import write

    for path in write(tmp_path):
        shipped = np.asarray(Image.open(REPO / "examples" / path.name))
        assert np.array_equal(shipped, np.asarray(Image.open(path))), path.name


DOC = """# Title
## Run me
```bash
echo one
#> one
for x in a b; do
  echo $x
done
#> a
#> b
curl -s localhost:8000/x \\
     -d '{}'
```
```python
with open("f") as f:
    print(1.23456789)
    #> 1.235
try:
    raise KeyError
except KeyError:
    print("caught")
#> caught
```
## Not me
```bash
rm -rf /
```
"""


def test_runner_reads_commands_outputs_and_sections():
    found = runner.blocks(DOC, ["Run me"])
    assert [b.lang for b in found] == ["bash", "python"]
    bash, python = found
    assert [s.code.split("\n")[0] for s in bash.steps] == ["echo one", "for x in a b; do", "curl -s localhost:8000/x \\"]
    assert [s.shown for s in bash.steps] == [["one"], ["a", "b"], None]
    assert [s.shown for s in python.steps] == [["1.235"], ["caught"]]  # the print in `with`; the whole `try`
    script = runner._bash_script(bash, 4321, "/py")
    assert "localhost:4321/x" in script and "8000" not in script
    assert runner.rounded("-4.1723 0.5 3.14159e-05 12") == "-4.172 0.5 0.0 12"
    steps = bash.steps
    for s, real in zip(steps, [["uno"], ["a", "b"], []]):
        s.real = real
    assert runner.rewrite(DOC, steps).split("\n")[4] == "#> uno"
    with pytest.raises(ValueError, match="follows no command"):
        runner.blocks("## Run me\n```bash\n#> orphan\necho x\n```\n", ["Run me"])
    with pytest.raises(ValueError, match="no section"):
        runner.blocks(DOC, ["Missing"])
