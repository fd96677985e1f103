"""Short model names: `vllm serve sdar-30b-moe` and friends.

The plugin writes the mapping to a file and points vLLM's own
`VLLM_MODEL_REDIRECT_PATH` at it (unless the user set one). vLLM computes
the served model name *before* applying the redirect, so the server
answers to the short name. A local directory with the short name wins: it
is left out of the mapping.

Offline, `vllm serve <short name>` whose checkpoint is neither local nor in
the Hugging Face cache stops with one line saying what was tried.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

_BASE = {
    "sdar-1.7b": "JetLM/SDAR-1.7B-Chat",
    "sdar-4b": "JetLM/SDAR-4B-Chat",
    "sdar-8b": "JetLM/SDAR-8B-Chat",
    "sdar-30b-moe": "JetLM/SDAR-30B-A3B-Chat",
    "sdar-30b-sci": "JetLM/SDAR-30B-A3B-Sci",
}
BLOCK_VARIANTS = (8, 16, 64)

# Block variants follow the release's naming: "<repo>-b<N>", fine-tuned at
# block size N (the Hub configs may not say so; see config.block_size_from_name).
SHORT_NAMES: dict[str, str] = {
    **_BASE,
    **{f"{name}-b{b}": f"{repo}-b{b}" for name, repo in _BASE.items() for b in BLOCK_VARIANTS},
}

# The project's own trained toy pairs ship inside the package (see
# vllm_sdar.convert.toy), so these names work offline, from any directory:
# each SDAR model (sdar-addition is the default model) and the plain Qwen3
# AR model it was converted from, which stock vLLM serves.
_ASSETS = Path(__file__).resolve().parent.parent / "assets"
PACKAGED = {
    f"{kind}-{task}": str(_ASSETS / f"{kind}-{task}")
    for task in ("addition", "sort", "tools")
    for kind in ("sdar", "ar")
}
SHORT_NAMES.update(PACKAGED)
# What `vllm-sdar serve` adds for a packaged model, option by option unless
# the command line sets it: the tool-calling pair writes hermes' format, and
# its JSON has no free whitespace (given it, the toy pads until max_tokens).
PACKAGED_SERVE_FLAGS: dict[str, list[tuple[str, ...]]] = {
    name: [
        ("--enable-auto-tool-choice",),
        ("--tool-call-parser", "hermes"),
        ("--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}'),
    ]
    for name in ("sdar-tools", "ar-tools")
}


def redirects(cwd: Path | None = None) -> dict[str, str]:
    """Short name -> Hub id (or packaged directory), minus names that exist
    as local directories."""
    cwd = cwd or Path.cwd()
    return {short: repo for short, repo in SHORT_NAMES.items() if not (cwd / short).is_dir()}


# Marks a redirect table this plugin wrote. Not VLLM_-prefixed: vLLM warns
# about every unknown VLLM_* variable.
_OURS = "SDAR_PLUGIN_REDIRECT_TABLE"


def install_redirects() -> None:
    """Point vLLM's model redirect at the short-name table for this process.

    A table the user configured is left alone. One inherited from a parent
    process that ran the plugin is rewritten: local directories are looked up
    relative to *this* process's working directory.
    """
    current = os.environ.get("VLLM_MODEL_REDIRECT_PATH")
    if current and current != os.environ.get(_OURS):
        return
    path = Path(tempfile.gettempdir()) / f"vllm-sdar-names-{os.getuid()}-{os.getpid()}.json"
    path.write_text(json.dumps(redirects()))
    os.environ["VLLM_MODEL_REDIRECT_PATH"] = os.environ[_OURS] = str(path)


def install_config_lookup_redirect() -> None:
    """Make vLLM's first config.json lookup follow the redirect table too.

    vLLM 0.32's EngineArgs.create_engine_config reads the model's
    config.json (`maybe_override_with_speculators`) *before* ModelConfig
    applies VLLM_MODEL_REDIRECT_PATH, so a short name reached the Hub as a
    repo id ("sdar-4b") and failed. The wrapper looks up the redirected
    target and, unless a speculators config replaced the model, hands back
    the name as given, so ModelConfig still derives the served model name
    from it and redirects it itself. (patches/README.md, 9)
    """
    from vllm.engine import arg_utils
    from vllm.transformers_utils.utils import maybe_model_redirect

    original = arg_utils.maybe_override_with_speculators
    if getattr(original, "_sdar_redirects", False):
        return

    def lookup(model: str, tokenizer: str | None, *args: Any, **kwargs: Any) -> Any:
        target = maybe_model_redirect(model)
        if target == model:
            return original(model, tokenizer, *args, **kwargs)
        new_tokenizer = maybe_model_redirect(tokenizer) if tokenizer else tokenizer
        resolved = original(target, new_tokenizer, *args, **kwargs)
        if resolved[0] == target and resolved[1] == new_tokenizer:
            return (model, tokenizer, resolved[2])
        return resolved

    lookup._sdar_redirects = True  # type: ignore[attr-defined]
    arg_utils.maybe_override_with_speculators = lookup


def install_offline_path_redirect() -> None:
    """Make the HF_HUB_OFFLINE model-path lookup follow the redirect table.

    With HF_HUB_OFFLINE=1, vLLM 0.32's `EngineArgs.__post_init__` resolves
    the model through `get_model_path` (a local-only Hub snapshot lookup)
    right after loading plugins and before any redirect is applied, so
    `LLM(model="sdar-addition")` raised LocalEntryNotFoundError. The wrapper
    checks the redirected target instead (still failing, offline, when it
    is missing) and hands back the name as given, so the served model name
    stays the short name and ModelConfig redirects it itself.
    (patches/README.md, 13)
    """
    from vllm.engine import arg_utils
    from vllm.transformers_utils.utils import maybe_model_redirect

    original = arg_utils.get_model_path
    if getattr(original, "_sdar_redirects", False):
        return

    def offline_path(model: Any, revision: str | None = None) -> Any:
        target = maybe_model_redirect(str(model))
        if target == str(model):
            return original(model, revision)
        original(target, revision)  # raises when the target is not available offline
        return model

    offline_path._sdar_redirects = True  # type: ignore[attr-defined]
    arg_utils.get_model_path = offline_path


def _serve_model_arg(argv: list[str]) -> str | None:
    """The model of a `vllm serve ...` command line, if this is one."""
    if len(argv) < 2 or Path(argv[0]).name != "vllm" or argv[1] != "serve":
        return None
    args = argv[2:]
    for i, arg in enumerate(args):
        if arg == "--model" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--model="):
            return arg.split("=", 1)[1]
    return args[0] if args and not args[0].startswith("-") else None


def _locate(repo: str) -> str | None:
    """Where `repo` is available without a download, or None."""
    from huggingface_hub import snapshot_download

    if Path(repo).is_dir():
        return repo
    try:
        return snapshot_download(repo, local_files_only=True)
    except Exception:
        return None


def _hub_reachable(repo: str) -> str | None:
    """None if the Hub answers for `repo`, else why not."""
    from huggingface_hub import constants, model_info

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        model_info(repo, timeout=10)
    except Exception as err:  # any failure means: cannot download now
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".strip()
    return None


def check_serve_command(argv: list[str] | None = None) -> None:
    """Fail fast, in one line, on `vllm serve <short name>` that cannot load."""
    if multiprocessing.current_process().name != "MainProcess":
        return
    model = _serve_model_arg(argv if argv is not None else sys.argv)
    if model is None or model not in SHORT_NAMES or Path(model).is_dir():
        return
    repo = SHORT_NAMES[model]
    if _locate(repo) is not None:
        return
    reason = _hub_reachable(repo)
    if reason is not None:
        raise SystemExit(
            f"vllm-sdar: cannot load '{model}': no local directory ./{model}, "
            f"{repo} is not in the Hugging Face cache, and the Hub is unreachable ({reason})."
        )
