"""Import a file of ``scripts/`` or ``benchmarks/`` as a module (neither is a package), for their tests."""

from __future__ import annotations

import csv
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"


def load_script(name: str, folder: Path = SCRIPTS) -> ModuleType:
    """``scripts/NAME.py`` (or ``FOLDER/NAME.py``), freshly executed."""
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    assert spec is not None and spec.loader is not None, name
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/NAME.py``, freshly executed."""
    return load_script(name, ROOT / "benchmarks")


def write_crows_csv(path: Path, rows: Sequence[tuple[str, str, str, str]]) -> Path:
    """A CrowS-Pairs CSV in the original columns at ``path``, one line per ``(sent_more, sent_less,
    stereo_antistereo, bias_type)`` row."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", "sent_more", "sent_less", "stereo_antistereo", "bias_type", "annotations", "anon_writer",
                    "anon_annotators"])
        for i, r in enumerate(rows):
            w.writerow([i, *r, "[]", "a", "[]"])
    return path
