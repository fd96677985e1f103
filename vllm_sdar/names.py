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
import re
import sys
import tempfile
from pathlib import Path

_BASE = {
    "sdar-1.7b": "JetLM/SDAR-1.7B-Chat",
    "sdar-4b": "JetLM/SDAR-4B-Chat",
    "sdar-8b": "JetLM/SDAR-8B-Chat",
    "sdar-30b-moe": "JetLM/SDAR-30B-A3B-Chat",
    "sdar-30b-sci": "JetLM/SDAR-30B-A3B-Sci",
}
BLOCK_VARIANTS = (8, 16, 64)

# Block variants follow the release's naming: "<repo>-b<N>", fine-tuned at
# block size N (the Hub configs may not say so; see block_size_from_name).
SHORT_NAMES: dict[str, str] = {
    **_BASE,
    **{f"{name}-b{b}": f"{repo}-b{b}" for name, repo in _BASE.items() for b in BLOCK_VARIANTS},
}

_BLOCK_SUFFIX = re.compile(r"-b(\d+)/?$")


def block_size_from_name(model: str) -> int | None:
    """Block size implied by a `-b<N>` model name or directory, if any."""
    match = _BLOCK_SUFFIX.search(str(model).rstrip("/"))
    return int(match.group(1)) if match else None


def redirects(cwd: Path | None = None) -> dict[str, str]:
    """Short name -> Hub id, minus names that exist as local directories."""
    cwd = cwd or Path.cwd()
    return {short: repo for short, repo in SHORT_NAMES.items() if not (cwd / short).is_dir()}


_OURS = "VLLM_SDAR_REDIRECT_PATH"  # marks a redirect table this plugin wrote


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
