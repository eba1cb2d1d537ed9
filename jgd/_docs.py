"""Docstrings built from optax's: jgd rules and schedules with optax's signatures document
their arguments in optax's words, its reST markup turned into the site's markdown."""

from __future__ import annotations

import inspect
import re
import textwrap


def optax_section(factory, title: str) -> dict[str, str]:
    """The entries of ``title:`` (Google style) in ``factory``'s docstring, by name, as markdown."""
    lines = (inspect.getdoc(factory) or "").splitlines()
    if f"{title}:" not in lines:
        return {}
    start = lines.index(f"{title}:") + 1
    end = next((i for i in range(start, len(lines)) if lines[i] and not lines[i].startswith(" ")), len(lines))
    text = textwrap.dedent("\n".join(lines[start:end]).rstrip())
    text = re.sub(r":(?:func|class|meth|attr|mod|obj):`~?([^`]+)`", r"`\1`", text)
    text = re.sub(r"`([^`<]+?) <([^>]+)>`_+", r"[\1](\2)", text)  # `text <url>`_ -> [text](url)
    entries: dict[str, str] = {}
    for line in text.splitlines():
        match = re.match(r"^(\w+)(?: \([^)]*\))?:\s*(.*)$", line)
        if match:
            name = match.group(1)
            entries[name] = match.group(2)
        elif entries:
            entries[name] += "\n" + line
    return entries


def arguments_section(function, optax_factory, optax_name: str) -> str:
    """An ``Args:`` section for ``function``'s parameters, in optax's words where optax has them."""
    documented = optax_section(optax_factory, "Args")
    lines = []
    for name, parameter in inspect.signature(function).parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        text = documented.get(name, f"as `{optax_name}`'s `{name}` (optax does not document it).")
        first, *rest = text.splitlines()
        lines.append(f"    {name}: {first}")
        lines.extend(f"        {line.strip()}" for line in rest)  # griffe: twice the entries' indent
    return "Args:\n" + "\n".join(lines) + "\n" if lines else ""
