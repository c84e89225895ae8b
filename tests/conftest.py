import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

def tool(name):
    "Path of a console script installed beside the running interpreter."
    p = BIN / name
    if not p.exists(): raise FileNotFoundError(f"{p} not found: run `make install` (or `make test`) to create the virtual environment")
    return str(p)
