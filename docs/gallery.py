"""Regenerates the examples gallery's outputs: runs every examples/*.py at its default size
with docs/examples/ as the working directory (figures land there) and keeps its printed
output as docs/examples/<name>.txt.

    python docs/gallery.py [NAME ...]
"""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "examples"

if __name__ == "__main__":
    names = sys.argv[1:] or sorted(p.stem for p in (ROOT / "examples").glob("*.py"))
    OUT.mkdir(exist_ok=True)
    for name in names:
        print(f"running examples/{name}.py", flush=True)
        done = subprocess.run([sys.executable, str(ROOT / "examples" / f"{name}.py")], cwd=OUT,
                              capture_output=True, text=True, check=True)
        (OUT / f"{name}.txt").write_text(done.stdout)
