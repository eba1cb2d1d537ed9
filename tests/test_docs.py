"""The habits that keep the documentation true: every public name has a reference entry
and a docstring example (which pytest runs as a doctest), and the docs' snippets exist."""

import inspect
import pathlib
import re

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
