"""MkDocs hooks: the benchmarks' chart is served next to the benchmarks page, whose text is
benchmarks/README.md itself (included with pymdownx.snippets), so the two never drift."""

import pathlib

from mkdocs.structure.files import File

ROOT = pathlib.Path(__file__).resolve().parents[1]


def on_files(files, config):
    files.append(File.generated(config, "benchmarks/update_step.png", abs_src_path=str(ROOT / "benchmarks" / "update_step.png")))
    return files
