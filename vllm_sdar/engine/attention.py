"""Block-causal attention over vLLM's paged KV cache, with no new kernel.

A query in block j sees keys 0 .. end of block j. Split every request's
query span at B-aligned positions into virtual requests; each virtual
request attends *non-causally* to keys [0, end of its block) through the
request's own block table. Every paged backend already does non-causal
attention over a block table (CPU attention here, FlashAttention on GPUs),
so rewriting `CommonAttentionMetadata` before the backend's builder runs is
enough. The same trick as vLLM's ChunkedLocalAttention
(`make_local_attention_virtual_batches`), with keys always starting at 0.

The KV of all scheduled tokens is written before attention reads the cache
(`forward_includes_kv_cache_update = False` on those backends), so a block
sees its own fresh KV.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch


def split_spans(
    query_start_loc: np.ndarray, seq_lens: np.ndarray, block_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split each request's query span at block boundaries.

    Returns (query lengths, key lengths, source request index) per virtual
    request. A request's queries are its last q_len positions of seq_len.
    Rows with no queries (padding) stay one virtual request with q_len 0.
    """
    q_lens = np.diff(query_start_loc).astype(np.int64)
    seq_lens = seq_lens.astype(np.int64)
    starts = seq_lens - q_lens
    has_q = q_lens > 0
    first_blk = starts // block_size
    last_blk = np.where(has_q, (seq_lens - 1) // block_size, first_blk)
    pieces = last_blk - first_blk + 1
    req = np.repeat(np.arange(len(q_lens)), pieces)
    offset = np.arange(pieces.sum()) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    blk = first_blk[req] + offset
    piece_start = np.maximum(blk * block_size, starts[req])
    piece_end = np.minimum((blk + 1) * block_size, seq_lens[req])
    q = np.where(has_q[req], piece_end - piece_start, 0)
    k = np.where(has_q[req], piece_end, seq_lens[req])
    return q, k, req


_PER_REQUEST_FIELDS = (
    "is_prefilling",
    "req_idx",
    "encoder_seq_lens",
    "encoder_seq_lens_cpu",
    "dcp_local_seq_lens",
    "dcp_local_seq_lens_cpu_upper_bound",
    "logits_indices_padded",
    "num_logits_indices",
    "max_logits_per_req",
    "mm_req_doc_ranges",
    "rswa_prefix_lens",
    "replayssm_decode_base_cpu",
    "_num_computed_tokens_cache",
    "_token_to_req_indices_cache",
)


def block_causal_metadata(cm: Any, block_size: int) -> Any:
    """A CommonAttentionMetadata whose requests are whole-or-partial blocks."""
    qsl_cpu = cm.query_start_loc_cpu[: cm.num_reqs + 1].numpy()
    seq_cpu = cm.seq_lens_cpu_upper_bound
    seq_cpu = (seq_cpu if seq_cpu is not None else cm.seq_lens.cpu())[: cm.num_reqs].numpy()
    q, k, req = split_spans(qsl_cpu, seq_cpu, block_size)
    device = cm.query_start_loc.device
    new_qsl_cpu = torch.from_numpy(np.concatenate([[0], np.cumsum(q)]).astype(np.int32))
    new_seq_cpu = torch.from_numpy(k.astype(np.int32))
    rows = torch.from_numpy(req).to(cm.block_table_tensor.device)
    fields = {f.name for f in dataclasses.fields(cm)}
    # Per-request fields of the original batch no longer line up; each
    # version has its own set (0.34 dropped replayssm_decode_base_cpu).
    dropped = {name: None for name in _PER_REQUEST_FIELDS if name in fields}
    return dataclasses.replace(
        cm,
        query_start_loc=new_qsl_cpu.to(device, non_blocking=True),
        query_start_loc_cpu=new_qsl_cpu,
        seq_lens=new_seq_cpu.to(device, non_blocking=True),
        seq_lens_cpu_upper_bound=new_seq_cpu,
        num_reqs=len(q),
        max_query_len=int(q.max(initial=0)),
        max_seq_len=int(k.max(initial=0)),
        block_table_tensor=cm.block_table_tensor[rows],
        causal=False,
        **dropped,
    )


def make_block_causal(builder: Any, block_size: int) -> None:
    """Make one attention metadata builder produce block-causal metadata."""
    if getattr(builder, "_sdar_block_size", None) == block_size:
        return
    original_build = builder.build

    def build(
        common_prefix_len: int, common_attn_metadata: Any, fast_build: bool = False, **kwargs: Any
    ) -> Any:
        # fast_build skips FlashAttention's ahead-of-time scheduler metadata,
        # whose buffers are sized for the real request count, not ours.
        split = block_causal_metadata(common_attn_metadata, block_size)
        return original_build(0, split, fast_build=True, **kwargs)

    builder.build = build
    # Reusing metadata across KV-cache groups would re-gather rows we
    # already split.
    builder.supports_update_block_table = False
    builder._sdar_block_size = block_size
