"""The autoregressive starting point of the toy: a small Qwen3 trained from
scratch with next-token loss on answer tokens (the model a user would
normally download), and its greedy decoder for the baseline row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import DynamicCache, GenerationConfig, Qwen3Config, Qwen3ForCausalLM

from vllm_sdar.convert.data import Example, batch_order, collate
from vllm_sdar.convert.shapes import ArSpec, qwen3_shape
from vllm_sdar.convert.train import lr_factor


def build_model(spec: ArSpec, eos_id: int) -> Qwen3ForCausalLM:
    config = Qwen3Config(
        **qwen3_shape(spec),
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    config.architectures = ["Qwen3ForCausalLM"]
    return Qwen3ForCausalLM(config)


def ar_loss(model: Qwen3ForCausalLM, ids: torch.Tensor, trainable: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy on trainable targets.

    Right padding needs no attention mask under a causal mask: real tokens
    never see the padding after them, and padded targets carry no loss.
    """
    logits = model(input_ids=ids).logits[:, :-1]
    target_mask = trainable[:, 1:]
    return F.cross_entropy(logits[target_mask].float(), ids[:, 1:][target_mask])


def train_ar(
    examples: list[Example],
    spec: ArSpec,
    tokenizer: Any,
    out: Path,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    warmup_steps: int = 0,
) -> dict:
    """Train, save (HF Qwen3 format with the tokenizer) and return token counts."""
    torch.manual_seed(seed)
    eos = tokenizer.eos_token_id
    model = build_model(spec, eos).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    # Same schedule shape as the conversion (cosine to 10%).
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, warmup_steps))
    tokens = trainable_tokens = 0
    losses = []
    bar = tqdm(range(steps), desc="ar", leave=False)
    for step in bar:
        batch = collate(
            [examples[i] for i in batch_order(len(examples), batch_size, step, seed)], 1, eos, eos
        )
        loss = ar_loss(model, batch.input_ids, batch.trainable)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        tokens += int(batch.valid.sum())
        trainable_tokens += batch.num_trainable
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.4f}")
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    GenerationConfig(bos_token_id=eos, eos_token_id=[eos], pad_token_id=eos).save_pretrained(out)
    return {
        "steps": steps,
        "tokens": tokens,
        "trainable_tokens": trainable_tokens,
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
    }


@torch.inference_mode()
def greedy(
    model: Qwen3ForCausalLM, prompt: list[int], stop_ids: set[int], max_tokens: int
) -> tuple[list[int], int]:
    """Greedy AR decoding with a KV cache: (tokens incl. the stop token, forwards).

    The prefill forward yields the first token and each later token costs
    one more forward, so forwards == tokens generated.
    """
    cache = DynamicCache()
    ids = torch.tensor([prompt])
    out: list[int] = []
    forwards = 0
    while len(out) < max_tokens:
        logits = model(input_ids=ids, past_key_values=cache, use_cache=True).logits
        forwards += 1
        nxt = int(logits[0, -1].argmax())
        out.append(nxt)
        if nxt in stop_ids:
            break
        ids = torch.tensor([[nxt]])
    return out, forwards
