"""Regenerate every output the docs show: run the example requests of README.md and
docs/serving.md against the shipped model, rewrite their `#>` output lines in place,
and retake the demo page's screenshot docs/demo.png.

    .venv/bin/python -m docs.examples             # rewrite README.md, docs/serving.md, docs/demo.png
    .venv/bin/python -m docs.examples --check     # only compare; exit 1 naming each stale output

Each document gets a fresh server, started as the README starts it (`python -m server`,
the shipped `models/blip-shapes` + `models/adapters`, an empty data directory) on a free
loopback port, with one torch thread so that every run computes the same numbers. Run it
after anything changes what the server answers (a new backbone or adapter in models/),
then commit the files it rewrote. tests/test_docs_examples.py fails while they are stale.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from client import local
from docs import runner

REPO = runner.REPO
# document -> the headings whose ```bash / ```python blocks run, in order
DOCUMENTS = {"README.md": ["Use it"], "docs/serving.md": ["Requests (curl)", "Video", "Client and CLI"]}
SCREENSHOT = REPO / "docs" / "demo.png"
DEMO_QUESTION, DEMO_CANDIDATES = "what colour is the circle ?", ["red", "blue", "green"]
REGENERATE = ".venv/bin/python -m docs.examples"


@contextmanager
def shipped_server(ready_s: float = 120):
    """`python -m server` on the shipped models, a free port and a fresh data directory; yields its URL."""
    with tempfile.TemporaryDirectory(prefix="unitrans-docs-data-") as data:
        env = {**os.environ, "UNITRANS_TORCH_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
        env = {k: v for k, v in env.items() if not k.startswith("UNITRANS_") or k == "UNITRANS_TORCH_THREADS"}
        proc, url = local.start(["--data", data, "--log-level", "warning"], env=env, cwd=REPO, ready_s=ready_s)
        try:
            yield url
        finally:
            local.stop(proc)


def run_document(name: str, url: str) -> tuple[str, list[runner.Step]]:
    """(the document's text, its steps with their real outputs)."""
    text = (REPO / name).read_text()
    steps = runner.run_blocks(runner.blocks(text, DOCUMENTS[name]), url)
    return text, steps


def problems(name: str, steps: list[runner.Step]) -> list[str]:
    """A stale shown output, or an error answered where the document shows none."""
    out = []
    for s in steps:
        if s.shown is not None and runner.rounded("\n".join(s.shown)) != "\n".join(s.real or []):
            out.append(f"{name}:{s.line}: `{s.code.splitlines()[0]}`\n    shows: {' / '.join(s.shown)}\n"
                       f"    real:  {' / '.join(s.real or [])}")
        elif s.shown is None and runner.error_of(s):
            out.append(f"{name}:{s.line}: `{s.code.splitlines()[0]}` answered an error: {runner.error_of(s)}")
    return out


def screenshot(url: str, path: Path = SCREENSHOT) -> None:
    """The demo page after a VQA answer with candidate scores, as the README shows it."""
    from docs import browser

    with browser.chromium() as driver:
        browser.open_demo(driver, url)
        browser.choose(driver, "vqa", "triangles-and-circle.png", [""])
        browser.ask_vqa(driver, DEMO_QUESTION, DEMO_CANDIDATES)
        driver.save_screenshot(str(path))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m docs.examples", description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="compare only; exit 1 if an output shown is not the real one")
    p.add_argument("--no-screenshot", action="store_true", help="leave docs/demo.png as it is")
    args = p.parse_args(argv)
    found = []
    for name in DOCUMENTS:
        with shipped_server() as url:
            if name == "README.md" and not (args.check or args.no_screenshot):
                screenshot(url)  # first, on the fresh server
                print(f"wrote {SCREENSHOT.relative_to(REPO)}")
            text, steps = run_document(name, url)
        errors = [x for x in problems(name, steps) if "answered an error" in x]
        found += problems(name, steps)
        if not args.check:
            if errors:
                print("\n".join(errors), file=sys.stderr)
                return 1
            new = runner.rewrite(text, steps)
            if new != text:
                (REPO / name).write_text(new)
            print(f"{name}: {sum(s.shown is not None for s in steps)} outputs "
                  f"{'rewritten' if new != text else 'already current'}")
    if args.check and found:
        print("\n".join(found) + f"\n\nregenerate with: {REGENERATE}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
