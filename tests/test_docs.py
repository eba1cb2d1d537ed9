"""The habits that keep the documentation true: every public name has a reference entry
and a docstring example (which pytest runs as a doctest), and the docs' snippets exist."""

import inspect
import pathlib
import re

import pytest

import jgd

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_public_name_has_a_reference_entry():
    entries = set()
    for page in (ROOT / "docs" / "reference").glob("*.md"):
        entries |= set(re.findall(r"^::: (jgd\.[\w.]+)", page.read_text(), flags=re.M))
    for name in jgd.__all__:
        assert {f"jgd.{name}", f"jgd.{name}.{name}"} & entries, f"jgd.{name} has no entry in docs/reference/"


def test_every_public_name_has_an_example():
    for name in jgd.__all__:
        doc = inspect.getdoc(getattr(jgd, name)) or ""
        assert ">>>" in doc, f"jgd.{name}'s docstring has no example"


def test_every_guide_is_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in (ROOT / "docs").rglob("*.md"):
        assert str(page.relative_to(ROOT / "docs")) in nav, f"{page} is not in mkdocs.yml's nav"


def test_the_every_rule_page_lists_every_rule_with_its_summary():
    """docs/reference/all-rules.md is written from optax_zoo/contrib's SUMMARIES: every rule is
    a row, with its summary, and no summary breaks the table with a bare |."""
    page = (ROOT / "docs" / "reference" / "all-rules.md").read_text()
    for module, prefix in ((jgd.optax_zoo, "jgd."), (jgd.contrib, "jgd.contrib.")):
        for name in module.NAMES:
            assert f"[`{prefix}{name}`]" in page, f"{prefix}{name} has no row in all-rules.md"
            assert module.SUMMARIES[name] in page, f"{prefix}{name}'s row does not hold its summary"
            assert "|" not in module.SUMMARIES[name].replace("\\|", ""), f"{prefix}{name}: a bare | breaks the table"


def _documented_objects():
    """Every object with a ``::: name`` entry in docs/reference/, imported."""
    import importlib

    names = set()
    for page in (ROOT / "docs" / "reference").glob("*.md"):
        names |= set(re.findall(r"^::: (jgd\.[\w.]+)", page.read_text(), flags=re.M))
    for full in sorted(names):
        parts = full.split(".")
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
                break
            except ImportError:
                continue
        for part in parts[i:]:
            obj = getattr(obj, part)
        yield full, obj


def test_every_documented_callable_documents_every_argument():
    """The reference's arguments tables come from Args: (Attributes: for results and states)
    sections as the site's parser (griffe, Google style) reads them: every parameter of every
    documented callable must be in one."""
    griffe = pytest.importorskip("griffe")
    undocumented = {}
    for full, obj in _documented_objects():
        if inspect.ismodule(obj) or not callable(obj):
            continue
        try:
            signature = inspect.signature(obj)
        except (TypeError, ValueError):
            continue
        wanted = [n for n, p in signature.parameters.items()
                  if n not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        sections = griffe.Docstring(inspect.getdoc(obj) or "").parse("google", warnings=False)
        documented = {name.strip().lstrip("*") for section in sections
                      if section.kind.value in ("parameters", "other parameters", "attributes")
                      for entry in section.value for name in entry.name.split(",")}
        missing = [n for n in wanted if n not in documented]
        if missing:
            undocumented[full] = missing
    assert not undocumented, f"arguments without a description: {undocumented}"


RAW_REST = (".. math::", ":math:`", ":func:`", ":class:`", ":meth:`", ":attr:`", "Example::", "====")


def test_the_built_site_shows_no_raw_rest_markup(tmp_path):
    """Build the site as CI does and read every page's text as a browser shows it: no reST
    directive or role left raw, and every formula inside an arithmatex span (typeset by the
    vendored KaTeX)."""
    pytest.importorskip("mkdocs")
    import html
    import subprocess
    import sys

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(site)],
                   cwd=ROOT, check=True, env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert (site / "assets" / "katex" / "katex.min.js").exists()
    offenders = []
    for page in site.rglob("*.html"):
        text = page.read_text()
        if "katex.min.js" not in text:
            offenders.append(f"{page}: does not load KaTeX")
        # the text a reader sees: tags dropped, code kept (a marker in code is still raw)
        visible = html.unescape(re.sub(r"<[^>]+>", "", re.sub(r"<script.*?</script>", "", text, flags=re.S)))
        offenders += [f"{page.relative_to(site)}: {marker!r}" for marker in RAW_REST if marker in visible]
        prose = re.sub(r'<span class="arithmatex">.*?</span>|<div class="arithmatex">.*?</div>|<code.*?</code>'
                       r"|<pre.*?</pre>|<script.*?</script>", "", text, flags=re.S)
        offenders += [f"{page.relative_to(site)}: formula outside arithmatex: {m!r}"
                      for m in re.findall(r"\\(?:frac|sqrt|eta|alpha|beta)\b", prose)]
    assert not offenders, "\n".join(offenders[:20])
