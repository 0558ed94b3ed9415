"""Run the shell and Python examples of a Markdown document, in order, and collect each
command's real output beside the output the document shows (used by docs/examples.py
and tests/test_docs_examples.py).

The document's convention: inside a fenced ```bash or ```python block of a run section,
the lines right after a command that start with `#>` are that command's output as the
document shows it (`#>` alone: an empty line). Floats in outputs are shown rounded to
3 decimals. A command with no `#>` lines is run and must not answer with an error body.

What a run may change in the text, and nothing else: `localhost:8000` and
`127.0.0.1:8000` point at the server under test (as does UNITRANS_URL, the CLI's
default server), and `.venv/bin/python` is this interpreter. Commands run in a scratch
directory holding a link to `examples/`, so the files they write stay out of the repo.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARK = "@@@unitrans-docs-step@@@"
RUN_LANGS = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python"}
_FLOAT = re.compile(r"-?\d+\.\d{4,}(?:[eE][-+]?\d+)?")
_PORT = re.compile(r"\b(localhost|127\.0\.0\.1):8000\b")


@dataclass
class Step:
    """One command (a shell command with its continuation lines, or one Python statement)."""

    lang: str
    code: str
    line: int  # 1-based line in the document of the command's first line
    shown: list[str] | None  # the `#>` lines after it (without the marker), None if it shows none
    shown_at: tuple[int, int] | None = None  # [start, end) 0-based line range of those `#>` lines
    indent: str = ""  # of the `#>` lines
    real: list[str] | None = None  # what the command printed, rounded as shown
    end: int = 0  # Python: the statement's last line in its block (1-based), where its marker goes
    col: int = 0  # Python: the statement's indentation


@dataclass
class Block:
    lang: str
    first: int  # 0-based index of the block's first code line
    lines: list[str]
    steps: list[Step] = field(default_factory=list)


def rounded(text: str) -> str:
    """Floats with more than 3 decimals rounded to 3, as the documents show them."""
    return _FLOAT.sub(lambda m: repr(round(float(m.group()), 3)), text)


def _heading(line: str) -> tuple[int, str] | None:
    m = re.match(r"^(#{1,6})\s+(.*?)\s*$", line)
    return (len(m.group(1)), m.group(2)) if m else None


def blocks(text: str, sections: list[str]) -> list[Block]:
    """The runnable fenced blocks under the headings titled `sections`, in document order."""
    lines = text.split("\n")
    found, level, inside, fence = [], None, False, None
    seen = set()
    for i, line in enumerate(lines):
        if fence is not None:
            if line.strip() == "```":
                if inside and fence.lang:
                    found.append(fence)
                fence = None
            else:
                fence.lines.append(line)
            continue
        if line.startswith("```"):
            lang = RUN_LANGS.get(line[3:].strip().lower())
            fence = Block(lang or "", i + 1, [])
            continue
        head = _heading(line)
        if head:
            if inside and head[0] <= level:
                inside = False
            if head[1] in sections:
                inside, level = True, head[0]
                seen.add(head[1])
    missing = [s for s in sections if s not in seen]
    if missing:
        raise ValueError(f"no section titled {missing}")
    for block in found:
        block.steps = (_bash_steps if block.lang == "bash" else _python_steps)(block)
        attached = sum(s.shown_at[1] - s.shown_at[0] for s in block.steps if s.shown_at)
        if attached != sum(line.lstrip().startswith("#>") for line in block.lines):
            raise ValueError(f"line {block.first + 1}: a `#>` output line follows no command directly")
    return found


def _shown_after(block: Block, j: int) -> tuple[list[str] | None, tuple[int, int] | None, str, int]:
    """The `#>` lines starting at block line j: (shown, range in the document, indent, next j)."""
    start, shown, indent = j, [], ""
    while j < len(block.lines) and block.lines[j].lstrip().startswith("#>"):
        line = block.lines[j]
        indent = line[: len(line) - len(line.lstrip())]
        shown.append(line.lstrip()[3:] if line.lstrip().startswith("#> ") else line.lstrip()[2:])
        j += 1
    if not shown:
        return None, None, "", j
    return shown, (block.first + start, block.first + j), indent, j


def _complete(code: str) -> bool:
    """Whether bash parses `code` as whole commands (a loop or a { ...; } group may span lines)."""
    if code.rstrip().endswith("\\"):
        return False
    return subprocess.run(["bash", "-n"], input=code + "\n", capture_output=True, text=True).returncode == 0


def _bash_steps(block: Block) -> list[Step]:
    """Commands: a line, with its continuation lines, or the lines up to where bash parses them whole."""
    steps, j = [], 0
    while j < len(block.lines):
        line = block.lines[j]
        if not line.strip() or line.lstrip().startswith("#"):
            j += 1
            continue
        start, code = j, [line]
        while not _complete("\n".join(code)) and j + 1 < len(block.lines):
            j += 1
            code.append(block.lines[j])
        shown, at, indent, j = _shown_after(block, j + 1)
        steps.append(Step("bash", "\n".join(code), block.first + start + 1, shown, at, indent))
    return steps


def _python_steps(block: Block) -> list[Step]:
    """Simple statements, also inside `with` and `if` bodies; a loop, a `try` or a def is one step."""
    source = "\n".join(block.lines)
    tree = ast.parse(source)
    steps = []

    def walk(body):
        for node in body:
            if isinstance(node, (ast.With, ast.AsyncWith, ast.If)):
                walk(node.body)
                continue
            code = "\n".join(block.lines[node.lineno - 1: node.end_lineno])
            shown, at, indent, _ = _shown_after(block, node.end_lineno)
            steps.append(Step("python", code, block.first + node.lineno, shown, at, indent,
                              end=node.end_lineno, col=node.col_offset))

    walk(tree.body)
    return steps


def _bash_script(block: Block, port: int, python: str) -> str:
    parts = ["set -eo pipefail"]
    for step in block.steps:
        parts += [_PORT.sub(rf"\g<1>:{port}", step.code).replace(".venv/bin/python", python),
                  f"printf '\\n%s\\n' '{MARK}'"]
    return "\n".join(parts) + "\n"


def _python_script(block: Block, port: int) -> str:
    lines = [_PORT.sub(rf"\g<1>:{port}", line) for line in block.lines]
    for step in sorted(block.steps, key=lambda s: s.end, reverse=True):  # insert bottom up
        lines.insert(step.end, " " * step.col + f"print('\\n{MARK}', flush=True)")
    return "\n".join(lines) + "\n"


class StepFailed(AssertionError):
    pass


def run_blocks(found: list[Block], url: str, python: str = sys.executable, timeout: float = 300) -> list[Step]:
    """Run every block in order against the server at `url`; fill in each step's `real`."""
    port = int(url.rsplit(":", 1)[1])
    with tempfile.TemporaryDirectory(prefix="unitrans-docs-") as cwd:
        os.symlink(REPO / "examples", Path(cwd) / "examples")
        env = {**os.environ, "UNITRANS_URL": url}  # the CLI's default server: the one under test
        for block in found:
            if block.lang == "bash":
                cmd, script = ["bash", "-c", _bash_script(block, port, python)], None
            else:
                script = Path(cwd) / "block.py"
                script.write_text(_python_script(block, port))
                cmd = [python, str(script)]
            done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
            outputs = done.stdout.split(f"\n{MARK}\n")  # one per finished step, then what follows the last
            for step, out in zip(block.steps, outputs):
                step.real = rounded(out).rstrip("\n").split("\n") if out.strip() else []
            if done.returncode != 0 or len(outputs) != len(block.steps) + 1:
                failed = block.steps[min(len(outputs) - 1, len(block.steps) - 1)]
                raise StepFailed(f"line {failed.line}: `{failed.code}` failed (exit {done.returncode}):\n"
                                 f"{done.stderr[-2000:]}")
    return [s for b in found for s in b.steps]


_ERROR = re.compile(r'"error":\s*\{\s*"type"')  # the server's {"error": {"type", "message"}}


def error_of(step: Step) -> str | None:
    """The first output line holding an error body, if the command printed one."""
    return next((line for line in step.real or [] if _ERROR.search(line)), None)


def rewrite(text: str, steps: list[Step]) -> str:
    """The document with each shown output replaced by the real one."""
    lines = text.split("\n")
    for step in sorted((s for s in steps if s.shown is not None), key=lambda s: s.shown_at[0], reverse=True):
        new = [f"{step.indent}#> {line}".rstrip() if line else f"{step.indent}#>" for line in step.real or [""]]
        lines[step.shown_at[0]: step.shown_at[1]] = new
    return "\n".join(lines)
