"""Every guide's code runs as written: its ```python blocks, top to bottom in one fresh
process per page, and a block followed by a plain ``` block prints exactly that text."""

import json
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").rglob("*.md"))
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```\n", flags=re.S | re.M)

# Runs a page's python blocks in order in one namespace; prints each block's stdout as JSON.
RUNNER = """
import contextlib, io, json, sys
blocks = json.loads(sys.stdin.read())
namespace, outputs = {"__name__": "__main__"}, []
for i, code in enumerate(blocks):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"block {i}", "exec"), namespace)
    outputs.append(out.getvalue())
print(json.dumps(outputs))
"""


def blocks(page):
    """The page's python blocks, each with the plain block right after it (its output) or None."""
    text = page.read_text()
    found = list(BLOCK.finditer(text))
    result = []
    for i, match in enumerate(found):
        if match.group(1) != "python":
            continue
        following = found[i + 1] if i + 1 < len(found) else None
        shown = (following.group(2) if following is not None and following.group(1) == ""
                 and not text[match.end():following.start()].strip() else None)
        result.append((match.group(2), shown))
    return result


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p)], ids=lambda p: str(p.relative_to(ROOT / "docs")))
def test_every_code_block_runs_and_prints_what_the_page_shows(page, tmp_path):
    code = [c for c, _ in blocks(page)]
    done = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(code), capture_output=True, text=True,
                          cwd=tmp_path, timeout=600)
    assert done.returncode == 0, f"{page.name}:\n{done.stderr[-3000:]}"
    outputs = json.loads(done.stdout.strip().splitlines()[-1])
    for i, ((_, shown), printed) in enumerate(zip(blocks(page), outputs)):
        if shown is not None:
            assert printed == shown, f"{page.name}, block {i}: printed {printed!r}, the page shows {shown!r}"


def test_code_lines_fit_the_code_box():
    """The site's code box shows 80 characters at a laptop's width: longer lines scroll."""
    long = [f"{page.relative_to(ROOT)}: {line}" for page in PAGES
            for language, body in BLOCK.findall(page.read_text()) if language in ("python", "py", "bash")
            for line in body.splitlines() if len(line) > 80]
    assert not long, "\n".join(long)
