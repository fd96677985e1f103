"""The shipped LoRA adapter: sdar-addition learns subtraction.

    python -m vllm_sdar.convert.toy_lora                    # rebuilds assets/lora-subtraction
    python -m vllm_sdar.convert.toy_lora --smoke --out /tmp/lora   # CI smoke run (~20 s)

1. data: subtraction problems (subtraction.py; "-" is the base tokenizer's
   `<|unk|>`), the 500 test problems held out, plus a quarter as many
   addition problems from sdar-addition's own training split (its held-out
   test problems excluded), so the adapter keeps the operation it had;
2. `convert.lora.train_lora`: a PEFT LoRA on every linear layer of the
   frozen sdar-addition, trained with the block-diffusion objective;
3. scores through the reference decoder, base vs base + adapter (merged), on
   held-out subtraction and addition problems: exact match and tokens per
   forward, greedy, B = 4;
4. the adapter (PEFT's two files) and eval.json go to --out.

Seeded and on a fixed number of CPU threads: the same command on the same
machine and software rebuilds the same adapter.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from vllm_sdar.algorithm.reference import ReferenceDecoder
from vllm_sdar.convert.addition import Addition
from vllm_sdar.convert.evaluate import eval_sdar
from vllm_sdar.convert.lora import ADAPTER_FILES, SUMMARY_FILE, LoraTrainConfig, merge_adapter
from vllm_sdar.convert.subtraction import Subtraction
from vllm_sdar.convert.task_base import write_jsonl
from vllm_sdar.convert.toy import ASSETS, DEFAULT_OUT, held_out

DEFAULT_ADAPTER = ASSETS / "lora-subtraction"
BASE_NAME = "sdar-addition"


@dataclass(frozen=True)
class LoraBudget:
    n_train: int = 50_000  # subtraction problems
    addition_share: float = 0.25  # addition problems per subtraction problem
    n_test: int = 500
    rank: int = 16
    alpha: int = 16
    steps: int = 800
    batch_size: int = 64
    lr: float = 1e-2
    thresholds: tuple[float, ...] = (0.9,)
    seed: int = 0


SMOKE = LoraBudget(n_train=500, n_test=10, rank=4, alpha=8, steps=5, batch_size=16)


def _row(model: str, task: str, score: dict) -> dict:
    return {"model": model, "task": task, **score}


def markdown(rows: list[dict]) -> str:
    lines = [
        "| model | task | strategy | exact match | tokens / forward (reference) "
        "| tokens / forward (fused) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        strategy = r["strategy"].removeprefix("low_confidence_")
        if r["threshold"] is not None:
            strategy += f" {r['threshold']}"
        lines.append(
            f"| {r['model']} | {r['task']} | {strategy} | {100 * r['accuracy']:.1f}% "
            f"({r['correct']}/{r['problems']}) | {r['tokens_per_forward']:.2f} "
            f"| {r['tokens_per_fused_forward']:.2f} |"
        )
    return "\n".join(lines)


def run(budget: LoraBudget, out: Path, work: Path, base: Path = DEFAULT_OUT) -> dict:
    timings: dict[str, float] = {}
    began = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    subtraction = Subtraction(max_digits=3)
    train, test = subtraction.make_splits(budget.n_train, budget.n_test, budget.seed)
    # sdar-addition's own split (its seed): its held-out problems stay unseen.
    addition_seed = json.loads((base / "eval.json").read_text())["budget"]["seed"]
    n_add = int(budget.n_train * budget.addition_share)
    add_train, _ = Addition(max_digits=3).make_splits(n_add, 500, addition_seed)
    records = [*train, *add_train]
    random.Random(budget.seed).shuffle(records)
    data = write_jsonl(records, work / "train.jsonl")
    timings["data"] = round(time.perf_counter() - began, 1)

    cfg = LoraTrainConfig(
        model=str(base),
        data=str(data),
        out=str(work / "adapter"),
        rank=budget.rank,
        alpha=budget.alpha,
        steps=budget.steps,
        batch_size=budget.batch_size,
        lr=budget.lr,
        seed=budget.seed,
        base_name=BASE_NAME,
    )
    from vllm_sdar.convert.lora import train_lora

    t0 = time.perf_counter()
    adapter = train_lora(cfg)
    timings["training"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    merged = merge_adapter(base, adapter, work / "merged")
    add_test = held_out(budget.n_test, base)
    strategies = [("low_confidence_dynamic", t) for t in budget.thresholds]
    strategies.append(("low_confidence_static", None))
    rows = []
    for label, model_dir in (("sdar-addition", base), ("+ lora-subtraction", merged)):
        decoder = ReferenceDecoder(model_dir)
        for task, problems in (("subtraction", test), ("addition", add_test)):
            for strategy, threshold in strategies:
                score = eval_sdar(decoder, problems, strategy, threshold, max_tokens=8)
                rows.append(_row(label, task, score.row()))
    timings["evaluation"] = round(time.perf_counter() - t0, 1)

    training = json.loads((adapter / SUMMARY_FILE).read_text())
    report = {
        "task": f"{subtraction.describe()}; '-' is <|unk|> in {BASE_NAME}'s tokenizer",
        "base": BASE_NAME,
        "budget": {**asdict(budget), "task": subtraction.to_json()},
        "training": {k: v for k, v in training.items() if k != "settings"},
        "results": rows,
        "table": markdown(rows),
        "threads": torch.get_num_threads(),
        "wall_s": timings,
    }
    out.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES:
        shutil.copyfile(adapter / name, out / name)
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="adapter directory")
    parser.add_argument("--work", type=Path, default=None, help="intermediate files")
    parser.add_argument("--smoke", action="store_true", help="tiny budget, for CI")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (reproducible)")
    args = parser.parse_args(argv)
    if args.smoke and (args.out is None or args.out.resolve() == DEFAULT_ADAPTER):
        parser.error("--smoke would overwrite the shipped adapter; pass --out")
    torch.set_num_threads(args.threads)
    budget = replace(SMOKE if args.smoke else LoraBudget(), seed=args.seed)
    out = args.out or DEFAULT_ADAPTER
    if args.work is not None:
        report = run(budget, out, args.work)
    else:
        with tempfile.TemporaryDirectory(prefix="sdar-lora-") as tmp:
            report = run(budget, out, Path(tmp))
    print(report["table"])
    print("wall time (s):", report["wall_s"])


if __name__ == "__main__":
    main()
