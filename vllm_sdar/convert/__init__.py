"""Paradigm conversion: turn a Qwen3 (dense or MoE) causal LM into an SDAR block-diffusion LM.

    python -m vllm_sdar.convert --model Qwen3-DIR --data train.jsonl --out OUT \\
        --block-size 4 --steps 2000 --batch-size 32 --lr 1e-5

Modules, one job each:
- source.py: load the Qwen3 / Qwen3-MoE checkpoint as SDAR(Moe)ForCausalLM (same tensor names,
  1:1), add `<|MASK|>` to the tokenizer, untie the lm_head;
- data.py: JSONL records -> token ids + which tokens are trained (assistant
  turns of chat records, the completion of prompt/completion records, all
  of text records), batches padded to whole blocks;
- objective.py: the block-diffusion loss (noisy + clean stream in one 2L
  forward under the BD3-LM/SDAR mask; weighting documented there);
- train.py: the AdamW loop, checkpoints, resume, determinism;
- checkpoint.py: the released format and training checkpoints;
- toy.py (+ task_base.py, addition.py, sorting.py, tasks.py (the task
  registry), shapes.py, ar.py, evaluate.py): the miniature experiment that
  builds the trained toy pairs (SDAR model + its AR parent):
  `vllm_sdar/assets/sdar-addition` (the project's default model) +
  `ar-addition`, and the long-answer `sdar-sort` + `ar-sort`.

The output directory is an SDAR checkpoint in the released format
(config.json with model_type "sdar", block_size, mask_token_id;
generation_config.json; safetensors; tokenizer with its mask token),
served by `vllm-sdar serve OUT` and decoded by
`vllm_sdar.algorithm.reference.ReferenceDecoder(OUT)`.

Scaling up. The loop is deliberately single-process; do not grow a
distributed trainer here. For a real model (SDAR's own recipe converts
Qwen3 1.7B-30B with a few billion tokens):
- keep the pieces that carry the method: `source.from_qwen3` for the model
  and tokenizer, `data.load_examples` / `data.collate` for batches and
  `objective.sdar_loss` for the loss. sdar_loss calls the decoder layers
  itself (it needs its own mask), so put it in the `forward` of a small
  nn.Module that holds the SDAR model and wrap THAT module in DDP / FSDP:
  their hooks run on the forward that is actually called;
- drive that from `accelerate` (Accelerator(mixed_precision="bf16"),
  accelerator.prepare(wrapper, optimizer, dataloader), `accelerate launch`
  with an FSDP config that wraps `Qwen3DecoderLayer`) or from a plain
  `torchrun` script (`torch.distributed.fsdp.fully_shard` on each decoder
  layer and on the wrapper, a DistributedSampler); save with
  `checkpoint.save_release` on rank 0 after gathering a full state dict;
- train in bf16 with fp32 master weights, turn on activation checkpointing
  per decoder layer, and use an attention kernel that takes the two-stream
  mask as a block mask (flex_attention) instead of a dense [2L, 2L] bool
  mask, which is quadratic in memory.
"""
