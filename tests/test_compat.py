"""The compatibility checker (vllm_sdar/tools/compat.py): it runs clean on the
installed vLLM, it catches a missing name or parameter, its site list is
the one patches/README.md shows, and every vLLM engine name the plugin
imports is on it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from vllm_sdar.tools import compat

REPO = Path(__file__).resolve().parent.parent


def test_installed_vllm_has_every_site() -> None:
    assert compat.main([]) == 0


def test_a_missing_name_or_parameter_is_caught() -> None:
    root = compat.installed_root()
    sites = (
        compat.Site("vllm.v1.core.sched.scheduler:Scheduler.no_such_method", "test"),
        compat.Site("vllm.v1.core.sched.scheduler:Scheduler.schedule", "test", ("no_such_arg",)),
        compat.Site("vllm.v1.outputs:LogprobsLists", "test", ("no_such_field",)),
        compat.Site("vllm.v1.outputs:LogprobsLists", "test", ("cu_num_generated_tokens",)),
    )
    found = [c.found for c in compat.check(root, "0.32.0", sites)]
    assert found == [False, False, False, True]


def test_patches_readme_shows_the_site_list() -> None:
    text = (REPO / "patches" / "README.md").read_text()
    table = re.search(r"<!-- compat-sites:begin -->\n(.*?)\n<!-- compat-sites:end -->", text, re.S)
    assert table is not None
    want = compat.sites_markdown()
    assert table.group(1) == want, "regenerate the table: vllm_sdar.tools.compat --sites"


def _imports() -> set[str]:
    names = set()
    for path in (REPO / "vllm_sdar").rglob("*.py"):
        if "tools" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "vllm":
                names |= {f"{node.module}:{a.name}" for a in node.names}
    return names


def test_every_vllm_name_the_plugin_imports_is_a_site() -> None:
    targets = [s.target for s in compat.SITES]
    missing = sorted(
        name
        for name in _imports()
        # A name is covered by its own site, a member's, or (a module) one inside it.
        if not any(
            t == name or t.startswith((name + ".", name.replace(":", ".") + ":")) for t in targets
        )
    )
    assert not missing, f"add to vllm_sdar/tools/compat.py SITES: {missing}"
