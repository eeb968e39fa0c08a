"""Load another study's script as a module (study folders have hyphens and are not packages), so a later study reads
and judges its runs as the earlier one did:

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from study_script import load_study_script
    earlier = load_study_script("busi-10pct-prior-weight")  # its score_validation.py
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

STUDIES = Path(__file__).resolve().parent


def load_study_script(study: str, script: str = "score_validation.py") -> ModuleType:
    """benchmarks/studies/STUDY/SCRIPT as a module; FileNotFoundError naming the path when it does not exist."""
    path = STUDIES / study / script
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such study script")
    spec = importlib.util.spec_from_file_location(f"{study.replace('-', '_')}_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # registered first, as an import does: dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
