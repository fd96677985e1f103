"""patches/README.md lists every place the plugin touches a vLLM internal.

The scan below finds, in every module of `vllm_sdar/`, each *site* where
the plugin:

- subclasses a class imported from vLLM (`class X(Scheduler)`);
- assigns an attribute of, or an item into, something imported from vLLM
  (`arg_utils.get_model_path = ...`, `MODELS_CONFIG_MAP[arch] = ...`);
- replaces an attribute with a wrapper it built (`obj.method = wrapper` or
  `= make_wrapper(...)`, where the wrapper is a function of that module),
  or `setattr(obj, ...)` on an object that is not its own.

A site is named `vllm_sdar/<module path>:<top-level name>` (the top-level
class or function that holds it). The test fails while a site's name is
missing from patches/README.md.

Registering a new site (e.g. a Ray executor patch): add an entry to
patches/README.md whose text contains that exact name, for example
``- **Where:** `vllm_sdar/ray_executor.py:SdarRayExecutor` ...`` with the
why, the vLLM version and what an upstream change would look like.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "vllm_sdar"
README = REPO / "patches" / "README.md"


def _vllm_names(tree: ast.AST) -> set[str]:
    """Names bound anywhere in the module by importing from vLLM."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "vllm":
            names |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {
                (a.asname or a.name).split(".")[0]
                for a in node.names
                if a.name.split(".")[0] == "vllm"
            }
    return names


def _root(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _is_site(node: ast.AST, vllm: set[str], local_defs: set[str]) -> bool:
    if isinstance(node, ast.ClassDef):
        return any(_root(base) in vllm for base in node.bases)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return node.func.id == "setattr" and _root(node.args[0]) not in (None, "self")
    if not isinstance(node, ast.Assign):
        return False
    for target in node.targets:
        root = _root(target)
        if not isinstance(target, (ast.Attribute, ast.Subscript)) or root in (None, "self"):
            continue
        if root in vllm:
            return True
        value = node.value.func if isinstance(node.value, ast.Call) else node.value
        wrapped = isinstance(value, ast.Name) and value.id in local_defs
        if isinstance(target, ast.Attribute) and wrapped:
            return True
    return False


def find_sites(source: str, module: str) -> set[str]:
    tree = ast.parse(source)
    vllm = _vllm_names(tree)
    local_defs = {
        n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
    }
    sites = set()
    for top in tree.body:
        name = getattr(top, "name", None)
        if name is None:
            continue
        if any(_is_site(node, vllm, local_defs) for node in ast.walk(top)):
            sites.add(f"{module}:{name}")
    return sites


def all_sites() -> set[str]:
    sites: set[str] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(REPO).as_posix()
        sites |= find_sites(path.read_text(), module)
    return sites


def test_every_site_is_listed_in_patches_readme() -> None:
    listed = README.read_text()
    missing = sorted(site for site in all_sites() if site not in listed)
    assert not missing, (
        "patches/README.md does not list these vLLM patch/wrap/subclass sites "
        f"(see this test's docstring for how to register one): {missing}"
    )


def test_scan_finds_the_known_kinds_of_site() -> None:
    sites = all_sites()
    for known in (
        "vllm_sdar/engine/scheduler.py:SdarScheduler",  # subclass
        "vllm_sdar/engine/engine_setup.py:register_config_hook",  # item into a vLLM table
        "vllm_sdar/serving/names.py:install_config_lookup_redirect",  # module function replaced
        "vllm_sdar/engine/attention.py:make_block_causal",  # instance method wrapped
        "vllm_sdar/serving/request_fields.py:install_request_fields",  # class method wrapped
    ):
        assert known in sites, known


def test_scan_catches_an_unlisted_wrap() -> None:
    source = (
        "def install():\n"
        "    from vllm.v1.core import kv_cache_manager\n"
        "    original = kv_cache_manager.KVCacheManager.allocate_slots\n"
        "    def allocate(*a):\n"
        "        return original(*a)\n"
        "    kv_cache_manager.KVCacheManager.allocate_slots = allocate\n"
        "def harmless(config):\n"
        "    config.block_size = 4\n"
    )
    assert find_sites(source, "vllm_sdar/new.py") == {"vllm_sdar/new.py:install"}
    assert "vllm_sdar/new.py:install" not in README.read_text()
