"""Check every place vllm-sdar touches vLLM against a vLLM source tree.

    python -m vllm_sdar.tools.compat                     # the installed vLLM
    python -m vllm_sdar.tools.compat DIR [DIR ...]       # unpacked trees (a dir holding vllm/)
    python -m vllm_sdar.tools.compat DIR ... --markdown docs/compat-report.md
    python -m vllm_sdar.tools.compat --sites             # the site list (patches/README.md)

A tree is read, never imported (a CUDA wheel's source checks on this CPU):
each site names a module, a class or function, and where it matters the
parameters or fields the plugin uses. A site needed only by some versions
says which (the V1 runner is gone from 0.34); a version branch lists its
alternatives (vllm_sdar/engine/vllm_compat.py), and one of them must be
there. Exit status 1 when a site a version needs is missing.
`tests/test_compat.py` runs it on the installed vLLM and checks this list
against patches/README.md.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

V1_ONLY = ("0.32", "0.33")  # vLLM versions that still have the V1 model runner
ALL = ("0.32", "0.33", "0.34")


@dataclass(frozen=True)
class Site:
    """`module:Name`, `module:Class.member`; params / fields that must exist."""

    target: str
    use: str  # what the plugin does there (patches/README.md section)
    params: tuple[str, ...] = ()
    versions: tuple[str, ...] = ALL
    # Version branch: any one of these targets (with `params`) will do.
    alternatives: tuple[str, ...] = ()


def _s(target: str, use: str, *params: str, versions: tuple[str, ...] = ALL) -> Site:
    return Site(target, use, tuple(params), versions)


SCHED = "vllm.v1.core.sched.scheduler:Scheduler"
MRV2 = "vllm.v1.worker.gpu"
SITES: tuple[Site, ...] = (
    # vLLM's public API the plugin imports
    *(
        _s(name, "public API")
        for name in (
            "vllm:LLM",
            "vllm:SamplingParams",
            "vllm:ModelRegistry",
            "vllm.platforms:current_platform",
            "vllm.sampling_params:SamplingParams",
            "vllm.sampling_params:RequestOutputKind",
            "vllm.exceptions:VLLMValidationError",
            "vllm.config:CUDAGraphMode",
            "vllm.distributed.parallel_state:cleanup_dist_env_and_memory",
            "vllm.lora.layers:LoRAMappingType",
        )
    ),
    # Registration and configuration (public extension points, 1)
    _s("vllm.model_executor.models.registry:_ModelRegistry.register_model", "registry"),
    _s("vllm.model_executor.models.config:MODELS_CONFIG_MAP", "1 config hook"),
    _s("vllm.model_executor.models.config:VerifyAndUpdateConfig", "1 config hook"),
    _s("vllm.model_executor.models.qwen3:Qwen3ForCausalLM", "models"),
    _s("vllm.model_executor.models.qwen3_moe:Qwen3MoeForCausalLM", "models"),
    _s("vllm.model_executor.models.interfaces:SupportsLoRA", "models"),
    # The scheduler (2, 3, 8)
    _s(f"{SCHED}.schedule", "2 scheduler"),
    _s(f"{SCHED}.update_from_output", "2 scheduler", "scheduler_output", "model_runner_output"),
    _s(f"{SCHED}.add_request", "2 scheduler", "request"),
    _s(f"{SCHED}._free_request", "2 scheduler", "request", "delay_free_blocks"),
    _s(f"{SCHED}._preempt_request", "2 scheduler", "request", "timestamp"),
    _s(f"{SCHED}._update_request_with_output", "2 scheduler", "request", "new_token_ids"),
    _s(f"{SCHED}._get_new_block_ids_to_zero", "2 scheduler"),
    _s(f"{SCHED}.make_stats", "2 scheduler", "spec_decoding_stats"),
    _s(f"{SCHED}._handle_blocked_waiting_request", "2 structured outputs", "request"),
    _s(f"{SCHED}.finish_requests", "2 structured outputs", "request_ids", "finished_status"),
    Site(
        f"{SCHED}._make_cached_request_data",
        "version branch: resumed requests",
        ("running_reqs", "num_scheduled_tokens", "spec_decode_tokens", "req_to_new_blocks"),
        alternatives=("resumed_reqs", ""),
    ),
    *(
        _s(f"{SCHED}.{attr}", "2 scheduler state")
        for attr in (
            "requests",
            "running",
            "waiting",
            "kv_cache_manager",
            "finished_req_ids",
            "finished_req_ids_dict",
            "reset_preempted_req_ids",
            "max_num_scheduled_tokens",
            "max_num_running_reqs",
            "max_model_len",
            "current_step",
            "log_stats",
            "lora_config",
            "deferred_waiting",
            "grammar_compile_error_reqs",
        )
    ),
    _s(f"{SCHED}.prev_step_scheduled_req_ids", "V1 token cache", versions=V1_ONLY),
    _s(f"{SCHED}.use_v2_model_runner", "runner choice", versions=V1_ONLY),
    *(
        _s(f"vllm.v1.core.kv_cache_manager:KVCacheManager.{m}", "2 KV pages")
        for m in (
            "get_computed_blocks",
            "allocate_slots",
            "get_blocks",
            "new_step_starts",
            "estimate_cached_tokens",
        )
    ),
    _s(
        "vllm.v1.core.sched.output:NewRequestData.from_request",
        "version branch: prefill_token_ids",
        "request",
        "block_ids",
        "prefill_token_ids",
        "uses_mrope",
    ),
    _s(
        "vllm.v1.core.sched.output:SchedulerOutput",
        "3 plans",
        "scheduled_new_reqs",
        "scheduled_cached_reqs",
        "num_scheduled_tokens",
        "total_num_scheduled_tokens",
        "scheduled_spec_decode_tokens",
        "scheduled_encoder_inputs",
        "preempted_req_ids",
        "finished_req_ids",
        "free_encoder_mm_hashes",
        "new_block_ids_to_zero",
    ),
    _s("vllm.v1.core.sched.utils:remove_all", "2 scheduler"),
    _s(
        "vllm.v1.request:Request",
        "2 request state",
        "num_computed_tokens",
        "spec_decode_metrics",
        "structured_output_request",
        "stop_reason",
        "status",
        "client_index",
        "trace_headers",
    ),
    _s("vllm.v1.request:Request.take_prefill_stats", "2 request state"),
    _s("vllm.v1.request:Request.take_events", "2 request state"),
    _s("vllm.v1.request:Request.all_token_ids", "2 request state"),
    _s("vllm.v1.request:Request.output_token_ids", "2 request state"),
    _s("vllm.v1.request:RequestStatus", "2 request state"),
    _s(
        "vllm.v1.engine:EngineCoreOutput",
        "2 outputs",
        "request_id",
        "new_token_ids",
        "new_logprobs",
        "finish_reason",
        "stop_reason",
        "events",
        "prefill_stats",
        "spec_decode_metrics",
        "trace_headers",
    ),
    _s("vllm.v1.engine:EngineCoreOutputs", "2 outputs", "outputs", "finished_requests"),
    _s("vllm.v1.engine:EngineCoreEventType", "2 outputs"),
    _s("vllm.v1.metrics.stats:RequestSpecDecodeMetrics.new", "8 counters"),
    _s("vllm.v1.metrics.stats:RequestSpecDecodeMetrics.observe", "8 counters"),
    _s("vllm.v1.metrics.stats:RequestSpecDecodeMetrics.to_dict", "14 response terms"),
    _s("vllm.v1.spec_decode.metrics:SpecDecodingStats.new", "8 counters"),
    _s(
        "vllm.v1.outputs:ModelRunnerOutput",
        "15 runner output",
        "req_ids",
        "sampled_token_ids",
        "logprobs",
        "kv_connector_output",
    ),
    _s("vllm.v1.outputs:ModelRunnerOutput.req_id_to_index", "V1 runner output", versions=V1_ONLY),
    _s(
        "vllm.v1.outputs:LogprobsLists",
        "15 logprobs",
        "logprob_token_ids",
        "logprobs",
        "sampled_token_ranks",
        "cu_num_generated_tokens",
    ),
    _s("vllm.v1.outputs:AsyncModelRunnerOutput.get_output", "23 MRV2 output"),
    # Structured outputs (2): the grammar, in the scheduler
    *(
        _s(f"vllm.v1.structured_output.backend_types:StructuredOutputGrammar.{m}", "2 grammar")
        for m in ("fill_bitmask", "validate_tokens", "accept_tokens", "is_terminated")
    ),
    _s("vllm.v1.structured_output.utils:choice_as_grammar", "structured fields"),
    _s("vllm.v1.structured_output.utils:grammar_is_likely_lark", "structured fields"),
    # Attention (5)
    _s(
        "vllm.v1.attention.backend:CommonAttentionMetadata",
        "5 block-causal split",
        "query_start_loc",
        "query_start_loc_cpu",
        "seq_lens",
        "seq_lens_cpu_upper_bound",
        "num_reqs",
        "max_query_len",
        "max_seq_len",
        "block_table_tensor",
        "causal",
    ),
    _s(
        "vllm.v1.attention.backend:AttentionMetadataBuilder.build",
        "5 block-causal split",
        "common_prefix_len",
        "common_attn_metadata",
        "fast_build",
    ),
    _s("vllm.v1.attention.backend:AttentionBackend.supports_non_causal", "5 backend check"),
    # Workers (6)
    _s("vllm.v1.worker.cpu_worker:CPUWorker.init_device", "6 workers"),
    _s("vllm.v1.worker.gpu_worker:Worker._make_model_runner", "6 workers"),
    # The V1 runner (4, 21), vLLM <= 0.33
    *(
        _s(f"vllm.v1.worker.gpu_model_runner:GPUModelRunner.{m}", "4 V1 runner", versions=V1_ONLY)
        for m in (
            "_prepare_inputs",
            "sample_tokens",
            "initialize_metadata_builders",
            "_model_forward",
            "execute_model_state",
            "kv_connector_output",
            "query_start_loc",
            "attn_groups",
        )
    ),
    _s("vllm.v1.worker.cpu_model_runner:CPUModelRunner", "4 V1 runner", versions=V1_ONLY),
    _s(
        "vllm.v1.worker.lora_model_runner_mixin:LoRAModelRunnerMixin.set_active_loras",
        "21 LoRA (V1)",
        "input_batch",
        "num_scheduled_tokens",
        "num_sampled_tokens",
        versions=V1_ONLY,
    ),
    _s(
        "vllm.v1.worker.lora_model_runner_mixin:LoRAModelRunnerMixin.load_lora_model",
        "21 LoRA (V1)",
        versions=V1_ONLY,
    ),
    _s("vllm.v1.sample.logits_processor:LogitsProcessor", "12 validator (V1)", versions=V1_ONLY),
    _s("vllm.v1.sample.logits_processor:BatchUpdate", "12 validator (V1)", versions=V1_ONLY),
    _s(
        "vllm.v1.sample.logits_processor:validate_logits_processors_parameters",
        "12 validator (V1)",
        versions=V1_ONLY,
    ),
    # Model Runner V2 (22)
    _s(
        f"{MRV2}.model_runner:GPUModelRunner.execute_model",
        "23 MRV2 runner glue",
        "scheduler_output",
    ),
    _s(
        f"{MRV2}.model_runner:GPUModelRunner.sample_tokens", "23 MRV2 runner glue", "grammar_output"
    ),
    _s("vllm.v1.worker.cpu.model_runner:CPUModelRunner", "23 MRV2 runner glue"),
    _s(f"{MRV2}.model_states:resolve_model_state_cls", "23 get_model_state_cls"),
    _s(
        f"{MRV2}.model_states.default:DefaultModelState.prepare_inputs",
        "23 model state",
        "input_batch",
        "req_states",
    ),
    _s(
        f"{MRV2}.model_states.interface:ModelState.preprocess_state",
        "23 model state",
        "input_batch",
    ),
    _s(
        f"{MRV2}.model_states.default:DefaultModelState.prepare_attn",
        "23 model state",
        "input_batch",
        "cudagraph_mode",
        "block_tables",
        "slot_mappings",
        "attn_groups",
        "kv_cache_config",
    ),
    _s(f"{MRV2}.model_states.interface:ModelState.custom_sampler", "23 model state", "sampler"),
    _s(
        f"{MRV2}.input_batch:InputBatch",
        "23 model state",
        "req_ids",
        "num_reqs",
        "num_scheduled_tokens",
        "num_computed_tokens_np",
        "query_start_loc_np",
        "input_ids",
        "logits_indices",
        "cu_num_logits",
        "cu_num_logits_np",
    ),
    _s(
        f"{MRV2}.sample.output:SamplerOutput",
        "23 sampler",
        "sampled_token_ids",
        "logprobs_tensors",
        "num_nans",
        "num_sampled",
        "num_rejected",
    ),
    _s(f"{MRV2}.lora_utils:LoraState.make_lora_inputs", "23 LoRA rows (version branch)"),
    _s(f"{MRV2}.sample.logits_processor:LogitsProcessor", "12 validator (MRV2)"),
    _s(
        f"{MRV2}.sample.logits_processor:build_custom_logits_processors_params_validator",
        "12 validator (MRV2)",
    ),
    _s("vllm.triton_utils:HAS_TRITON", "23 MRV2 refusal"),
    _s("vllm.sampling_params:SamplingParams._validate_structured_outputs", "22 field names"),
    # Serving (9-14, 17, 19, 20) and Ray (16)
    _s("vllm.engine.arg_utils:maybe_override_with_speculators", "10 short names"),
    _s("vllm.engine.arg_utils:get_model_path", "13 short names offline"),
    _s("vllm.transformers_utils.utils:maybe_model_redirect", "10 short names"),
    _s(
        "vllm.entrypoints.openai.completion.protocol:CompletionRequest.to_sampling_params",
        "9 request fields",
    ),
    _s(
        "vllm.entrypoints.openai.chat_completion.protocol:ChatCompletionRequest.to_sampling_params",
        "9 request fields",
    ),
    _s("vllm.entrypoints.serve.middleware.authenticate:GUARDED_PREFIX", "17 API key"),
    _s("vllm.entrypoints.cli.main:main", "11 CLI"),
    _s("vllm.v1.engine.async_llm:AsyncLLM.shutdown", "20 lifecycle"),
    _s("vllm.v1.engine.exceptions:EngineDeadError", "20 lifecycle"),
    _s("vllm.v1.metrics.loggers:StatLoggerBase", "metrics"),
    _s("vllm.v1.executor.ray_executor_v2:RayWorkerProc", "16 Ray on CPU"),
    _s("vllm.v1.executor.ray_executor_v2:initialize_ray_cluster", "16 Ray on CPU"),
    _s("vllm.platforms.interface:Platform.ray_device_key", "16 Ray on CPU"),
    _s("vllm.lora.ops.torch_ops.lora_ops:bgmv_expand", "21 LoRA CPU fix"),
    _s("vllm.lora.ops.torch_ops.lora_ops:bgmv_expand_slice", "21 LoRA CPU fix"),
    _s("vllm.lora.punica_wrapper.punica_cpu:bgmv_expand", "21 LoRA CPU fix"),
    _s("vllm.lora.peft_helper:PEFTHelper.from_local_dir", "21 LoRA admission"),
    _s("vllm.lora.utils:get_adapter_absolute_path", "21 LoRA admission"),
)


# -- reading a tree ----------------------------------------------------------


@cache
def _module(root: Path, module: str) -> ast.Module | None:
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return ast.parse(path.read_text(encoding="utf-8"))
    return None


def _top_level(tree: ast.Module, name: str) -> ast.AST | None:
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == name:
                return node
        elif isinstance(node, ast.Assign):
            if any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                return node
        elif isinstance(node, ast.AnnAssign):
            if isinstance(node.target, ast.Name) and node.target.id == name:
                return node
        elif isinstance(node, (ast.ImportFrom, ast.Import)):
            if any((a.asname or a.name.split(".")[-1]) == name for a in node.names):
                return node
        elif isinstance(node, (ast.If, ast.Try)):
            found = _top_level(ast.Module(body=_branches(node), type_ignores=[]), name)
            if found is not None:
                return found
    return None


def _branches(node: ast.AST) -> list[ast.stmt]:
    body = list(getattr(node, "body", []))
    body += getattr(node, "orelse", []) + getattr(node, "finalbody", [])
    for handler in getattr(node, "handlers", []):
        body += handler.body
    return body


def _class_members(cls: ast.ClassDef) -> dict[str, ast.AST]:
    """Methods, class-level fields and `self.x =` assignments in methods."""
    members: dict[str, ast.AST] = {}
    for node in cls.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            members[node.name] = node
            for sub in ast.walk(node):
                targets = (
                    sub.targets
                    if isinstance(sub, ast.Assign)
                    else [sub.target]
                    if isinstance(sub, (ast.AnnAssign, ast.AugAssign))
                    else []
                )
                for t in targets:
                    if (
                        isinstance(t, ast.Attribute)
                        and isinstance(t.value, ast.Name)
                        and t.value.id == "self"
                    ):
                        members.setdefault(t.attr, sub)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            members[node.target.id] = node
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    members[t.id] = node
    return members


def _params(node: ast.AST) -> set[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        a = node.args
        return {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs}
    if isinstance(node, ast.ClassDef):  # a dataclass / NamedTuple: its fields
        return set(_class_members(node))
    return set()


def resolve(root: Path, target: str) -> ast.AST | None:
    """The AST node a site names in the tree, or None."""
    module, _, qual = target.partition(":")
    tree = _module(root, module)
    if tree is None:
        return None
    first, *rest = qual.split(".")
    node = _top_level(tree, first)
    if isinstance(node, ast.ImportFrom) and node.module and not rest:
        return node
    if isinstance(node, ast.ImportFrom) and node.module:
        # Re-exported class: follow it to the module that defines it.
        source = ("." * node.level) + node.module
        if node.level:
            package = module if tree is _module(root, module) else module
            parts = package.split(".")[: len(package.split(".")) - node.level + 1]
            source = ".".join([*parts, node.module])
        return resolve(root, f"{source}:{qual}")
    for member in rest:
        if not isinstance(node, ast.ClassDef):
            return None
        node = _class_members(node).get(member)
    return node


@dataclass
class Check:
    site: Site
    needed: bool
    found: bool
    detail: str


def check(root: Path, version: str, sites: tuple[Site, ...] = SITES) -> list[Check]:
    minor = ".".join(version.split(".")[:2])
    out = []
    for site in sites:
        needed = minor in site.versions
        node = resolve(root, site.target)
        detail = ""
        found = node is not None
        if found and site.params:
            missing = sorted(set(site.params) - _params(node))
            if missing:
                found, detail = False, f"missing {', '.join(missing)}"
        if found and site.alternatives:
            params = _params(node)
            taken = [a for a in site.alternatives if not a or a in params]
            detail = f"branch: {taken[0] or 'without ' + site.alternatives[0]}"
        if node is None:
            detail = "absent"
        out.append(Check(site, needed, found, detail))
    return out


def tree_version(root: Path) -> str:
    """The tree's vLLM version (`vllm/_version.py`) or its dist-info's."""
    path = root / "vllm" / "_version.py"
    text = path.read_text() if path.exists() else ""
    m = re.search(r"""(?:__version__|version)\s*(?::\s*str)?\s*=\s*['"]([^'"]+)['"]""", text)
    if m:
        return m.group(1)
    for info in root.glob("vllm*.dist-info/METADATA"):
        m = re.search(r"^Version: (.+)$", info.read_text(), re.M)
        if m:
            return m.group(1).strip()
    raise SystemExit(f"cannot tell the vLLM version of {root}")


def installed_root() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    if spec is None or spec.origin is None:
        raise SystemExit("vLLM is not installed: pass a source tree")
    return Path(spec.origin).parent.parent


# -- output ------------------------------------------------------------------


def sites_markdown() -> str:
    """The site list as patches/README.md holds it (tests/test_compat.py)."""
    lines = ["| vLLM name | used for | versions |", "|---|---|---|"]
    for s in SITES:
        versions = "all" if s.versions == ALL else ", ".join(s.versions)
        lines.append(f"| `{s.target}` | {s.use} | {versions} |")
    return "\n".join(lines)


def report_markdown(results: dict[str, list[Check]]) -> str:
    versions = list(results)
    head = "| site | used for | " + " | ".join(versions) + " |"
    lines = [head, "|---|---|" + "---|" * len(versions)]
    for i, site in enumerate(SITES):
        cells = []
        for v in versions:
            c = results[v][i]
            mark = "present" if c.found else ("**MISSING**" if c.needed else "absent (not needed)")
            cells.append(mark + (f" ({c.detail})" if c.detail and c.found else ""))
        lines.append(f"| `{site.target}` | {site.use} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "trees", nargs="*", type=Path, help="dirs holding vllm/ (default: installed)"
    )
    parser.add_argument("--markdown", type=Path, help="write the report table here")
    parser.add_argument("--sites", action="store_true", help="print the site list and exit")
    args = parser.parse_args(argv)
    if args.sites:
        print(sites_markdown())
        return 0
    roots = args.trees or [installed_root()]
    results: dict[str, list[Check]] = {}
    failed = 0
    for root in roots:
        version = tree_version(root)
        checks = check(root.resolve(), version)
        results[version] = checks
        bad = [c for c in checks if c.needed and not c.found]
        failed += len(bad)
        print(f"vLLM {version} ({root}): {len(checks) - len(bad)}/{len(checks)} sites ok")
        for c in bad:
            print(f"  MISSING {c.site.target} ({c.site.use}): {c.detail}")
    if args.markdown:
        args.markdown.write_text(report_markdown(results) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
