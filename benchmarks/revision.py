"""Code as it was at a git revision, imported beside today's: the `before`
side of the before/after studies (`unmask`, `sampling`)."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Where the decoding module lived at a revision (the package was grouped by
# layer later), with the package its relative imports resolve against.
DECODING_PATHS = {
    "vllm_sdar/algorithm/decoding.py": "vllm_sdar.algorithm",
    "vllm_sdar/decoding.py": "vllm_sdar",
}


def decoding_at(rev: str) -> types.ModuleType:
    """The decoding module at git revision `rev`, imported as `decoding_before`.

    Imports it makes of sibling modules resolve to today's tree: only the
    module's own code is the revision's.
    """
    for path in DECODING_PATHS:
        shown = subprocess.run(
            ["git", "show", f"{rev}:{path}"], cwd=REPO, capture_output=True, text=True
        )
        if shown.returncode == 0:
            break
    else:
        raise FileNotFoundError(f"no decoding module at {rev} (tried {list(DECODING_PATHS)})")
    module = types.ModuleType("decoding_before")
    module.__package__ = DECODING_PATHS[path]
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(shown.stdout, f"{rev}:{path}", "exec"), module.__dict__)
    return module
