"""The package as users install it: the wheel carries every file distbatch needs, and no
top-level `workers` package (it would clash with users' own)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_lua_includes_and_py_typed_and_no_workers(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(ROOT)], check=True, timeout=300)
    (wheel,) = tmp_path.glob("distbatch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    lua = {p.relative_to(ROOT).as_posix() for p in (ROOT / "distbatch" / "lua").rglob("*.lua")}
    assert lua and lua <= names, sorted(lua - names)
    assert "distbatch/lua/includes/clock.lua" in names and "distbatch/py.typed" in names
    assert not any(n.startswith("workers/") for n in names)
    assert {"distbatch/serve/app.py", "distbatch/serve/static/dashboard.html", "distbatch/aio.py"} <= names
