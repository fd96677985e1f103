"""Soak: many concurrent clients send mixed requests to `vllm-sdar serve` for a
bounded time; every answer is checked against `LLM(...)` offline.

    python -m tests.soak --mode full --out benchmarks/results/soak-full.json

Mix: completions (token-id prompts) and chat, stream and not, every remasking
strategy, denoising_steps 1/2/4, thresholds, greedy and seeded temperatures,
n up to 3, stop strings, prompts up to max_model_len, max_tokens up to the
context limit, ~10% of streams cut by the client after their first chunk.
Checks (`check`): each uncut request answers 200 with every choice finished;
its text / token ids / finish reasons equal the offline engine's for the same
input (so no answer carries another request's text); the SDAR committed-token
counter moves by vLLM's generation-token count (up to one block per cut
stream) and covers the usage of the answered requests; at the end nothing
runs or waits and the KV cache is empty; the server's memory grows less
than MEMORY_BOUND_MIB over the second half.

The server gets a small KV cache (`--num-gpu-blocks-override`) with prefix
caching on, so the load also preempts and recomputes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from vllm_sdar.algorithm.decoding import STRATEGIES
from vllm_sdar.tools.server_process import serve_process

MODEL = "sdar-4b"
MAX_MODEL_LEN = 512
B = 4
KV_PAGES = 8  # of 128 tokens: two max_model_len requests at a time
MODES = {  # seconds of load, most requests, concurrent clients, answers re-run offline
    # A seeded sample of the answers is re-run offline: on this CPU LLM(...)
    # needs about as long per answer as the server did under load (full run:
    # 160 answers in 169 s), so checking all would double the run.
    # CI also caps the sample's generated tokens (max_tokens x n), so one run
    # of long answers cannot stretch the check.
    "ci": {
        "duration_s": 50.0,
        "max_requests": 300,
        "concurrency": 8,
        "compare": 32,
        "compare_tokens": 1500,
    },
    "full": {
        "duration_s": 600.0,
        "max_requests": 20000,
        "concurrency": 24,
        "compare": 160,
        "compare_tokens": None,
    },
}
REQUEST_TIMEOUT_S = 300.0
# RSS of the server's process tree may grow this much over the second half of
# the run. After warm-up nothing per request should stay; what can still move
# is allocator high-water marks (bigger batches, longer prompts seen late) and
# Prometheus histograms' label sets. 64 MiB is ~2% of the tree's ~3 GiB and is
# hundreds of times what a per-request leak of even 1 KiB would need to stay
# under in a CI run of a few hundred requests, so a real leak stands out only
# in the full run: its figure is reported, not just the pass.
MEMORY_BOUND_MIB = 64.0
SDAR_COMMITTED = "vllm:sdar_committed_tokens_total"
SDAR_FORWARDS = "vllm:sdar_denoising_forwards_total"
GEN_TOKENS = "vllm:generation_tokens_total"
STOPS = [" the", "e", ".", "\n", "ing"]
WORDS = ["the", "cat", "sat", "on", "a", "mat", "while", "ships", "sailed", "by", "under"]


def server_args(kv_pages: int = KV_PAGES, api_key: str | None = None) -> list[str]:
    args = [
        MODEL,
        "--dtype", "float32",
        "--max-model-len", str(MAX_MODEL_LEN),
        "--gpu-memory-utilization", "0.5",
        "--enforce-eager",
        "--enable-prefix-caching",
        "--num-gpu-blocks-override", str(kv_pages),
    ]  # fmt: skip
    return args + (["--api-key", api_key] if api_key else [])


@dataclass
class Job:
    index: int
    kind: str  # "completion" | "chat"
    body: dict[str, Any]
    cut: bool = False


@dataclass
class Answer:
    status: int = 0
    texts: list[str] = field(default_factory=list)
    token_ids: list[list[int]] = field(default_factory=list)
    finish: list[str | None] = field(default_factory=list)
    usage: dict[str, int] | None = None
    done: bool = False  # stream reached [DONE] / body parsed
    error: str | None = None
    seconds: float = 0.0


def make_job(rng: random.Random, index: int) -> Job:
    kind = "chat" if rng.random() < 0.25 else "completion"
    strategy = rng.choice(STRATEGIES)
    body: dict[str, Any] = {
        "model": MODEL,
        "remasking_strategy": strategy,
        "denoising_steps": rng.choice([1, 2, 4]),
        "temperature": 0.0,
        "top_p": 1.0,
        "top_k": -1,
        "ignore_eos": rng.random() < 0.5,
        "return_token_ids": True,
    }
    if strategy == "low_confidence_dynamic":
        body["confidence_threshold"] = rng.choice([0.05, 0.3, 0.9])
    if strategy == "entropy_bounded":
        body["eb_threshold"] = rng.choice([0.5, 3.0, 10.0])
    if rng.random() < 0.5:
        body["temperature"] = rng.choice([0.5, 1.0])
        body["seed"] = rng.randrange(1 << 20)
        body["top_p"] = rng.choice([1.0, 0.9])
        body["top_k"] = rng.choice([-1, 50])
    if body["temperature"] and rng.random() < 0.3:
        body["n"] = rng.choice([2, 3])  # vLLM refuses n > 1 with greedy sampling
    if rng.random() < 0.15:
        body["stop"] = rng.sample(STOPS, 2)
    r = rng.random()
    if kind == "chat":
        words = [rng.choice(WORDS) for _ in range(rng.randrange(1, 40))]
        body["messages"] = [{"role": "user", "content": " ".join(words)}]
        body["max_tokens"] = rng.randrange(1, 64)
    else:
        # Mostly short, some long, a few near the context limit.
        length = rng.randrange(1, 64) if r < 0.7 else rng.randrange(64, MAX_MODEL_LEN - 8)
        body["prompt"] = [rng.randrange(100, 150000) for _ in range(length)]
        room = MAX_MODEL_LEN - length
        cap = 32 if rng.random() < 0.7 else room
        body["max_tokens"] = rng.randrange(1, min(cap, room) + 1)
    cut = index % 10 == 3  # exactly 10% of the requests: streams the client cuts
    if cut or rng.random() < 0.5:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return Job(index, kind, body, cut=cut)


def _parse_stream_line(line: str, ans: Answer, chat: bool) -> None:
    if line == "data: [DONE]":
        ans.done = True
        return
    if not line.startswith("data:"):
        return
    chunk = json.loads(line[5:])
    if chunk.get("usage"):
        ans.usage = chunk["usage"]
    for c in chunk.get("choices", []):
        i = c["index"]
        while len(ans.texts) <= i:
            ans.texts.append("")
            ans.token_ids.append([])
            ans.finish.append(None)
        ans.texts[i] += (c.get("delta", {}).get("content") or "") if chat else c.get("text", "")
        ans.token_ids[i] += c.get("token_ids") or []
        if c.get("finish_reason"):
            ans.finish[i] = c["finish_reason"]


def _parse_body(data: dict[str, Any], ans: Answer, chat: bool) -> None:
    ans.usage = data.get("usage")
    for c in sorted(data.get("choices", []), key=lambda c: c["index"]):
        ans.texts.append((c["message"]["content"] or "") if chat else c["text"])
        ans.token_ids.append(list(c.get("token_ids") or []))
        ans.finish.append(c.get("finish_reason"))
    ans.done = True


async def run_job(client: httpx.AsyncClient, job: Job) -> Answer:
    chat = job.kind == "chat"
    url = "/v1/chat/completions" if chat else "/v1/completions"
    ans = Answer()
    t0 = time.monotonic()
    try:
        if job.body.get("stream"):
            async with client.stream("POST", url, json=job.body) as r:
                ans.status = r.status_code
                async for line in r.aiter_lines():
                    _parse_stream_line(line, ans, chat)
                    if job.cut and ans.texts:
                        break  # hang up after the first chunk: the client cut
        else:
            r = await client.post(url, json=job.body)
            ans.status = r.status_code
            if r.status_code == 200:
                _parse_body(r.json(), ans, chat)
            else:
                ans.error = r.text[:300]
    except Exception as e:  # recorded and counted as an error by check()
        ans.error = f"{type(e).__name__}: {e}"
    ans.seconds = time.monotonic() - t0
    return ans


def metrics_text(base: str) -> str:
    return urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()


def metric(text: str, name: str, label: str | None = None) -> float:
    """A Prometheus metric summed over label sets (those containing `label`)."""
    total = 0.0
    for line in text.splitlines():
        if line.split("{", 1)[0].split(" ", 1)[0] == name and (label is None or label in line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_idle(base: str, timeout: float = 60.0) -> dict[str, float]:
    """Poll /metrics until nothing runs or waits and the KV cache is empty."""
    deadline = time.monotonic() + timeout
    while True:
        text = metrics_text(base)
        state = {
            n: metric(text, "vllm:" + n)
            for n in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc")
        }
        if not any(state.values()) or time.monotonic() > deadline:
            return state
        time.sleep(0.5)


class MemorySampler:
    """RSS of a process and its descendants, sampled every second on a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _rss_mib(self) -> float:
        root = psutil.Process(self.pid)
        total = 0
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
        return total / 2**20

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.samples.append((time.monotonic(), self._rss_mib()))

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join(timeout=5)
        n = len(self.samples)
        if n < 4:
            return {"samples": n}
        rss = [s[1] for s in self.samples]
        half = rss[n // 2 :]
        # Median of the first and last tenth of the second half: one sample's
        # transient (a big batch in flight) does not count as growth.
        k = max(1, len(half) // 10)
        start = sorted(half[:k])[k // 2]
        end = sorted(half[-k:])[k // 2]
        return {"samples": n, "rss_mib_start": rss[0], "rss_mib_mid": start, "rss_mib_end": end,
                "growth_second_half_mib": end - start}  # fmt: skip


async def drive(
    base: str, duration_s: float, max_requests: int, concurrency: int, seed: int,
    api_key: str | None = None,
) -> list[tuple[Job, Answer]]:  # fmt: skip
    """Bounded load: stops at `duration_s` or `max_requests`, whichever first."""
    rng = random.Random(seed)
    results: list[tuple[Job, Answer]] = []
    counter = iter(range(max_requests))
    end = time.monotonic() + duration_s
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(
        base_url=base, timeout=REQUEST_TIMEOUT_S, headers=headers, limits=limits
    ) as client:

        async def worker() -> None:
            for index in counter:
                if time.monotonic() > end:
                    return
                job = make_job(rng, index)
                results.append((job, await run_job(client, job)))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sorted(results, key=lambda r: r[0].index)


def sampling_params(body: dict[str, Any]) -> Any:
    from vllm import SamplingParams

    from vllm_sdar.algorithm.config import SdarOptions

    return SamplingParams(
        n=body.get("n", 1),
        temperature=body["temperature"],
        top_p=body["top_p"],
        top_k=body["top_k"],
        seed=body.get("seed"),
        max_tokens=body["max_tokens"],
        stop=body.get("stop"),
        ignore_eos=body["ignore_eos"],
        extra_args={k: body[k] for k in SdarOptions.KEYS if k in body},
    )


def offline_answers(llm: Any, jobs: list[Job]) -> dict[int, Answer]:
    """The same requests through `LLM(...)`, one batch per kind."""
    out: dict[int, Answer] = {}
    comp = [j for j in jobs if j.kind == "completion"]
    chat = [j for j in jobs if j.kind == "chat"]
    results = []
    if comp:
        prompts = [{"prompt_token_ids": j.body["prompt"]} for j in comp]
        params = [sampling_params(j.body) for j in comp]
        results += zip(comp, llm.generate(prompts, params, use_tqdm=False))
    if chat:
        params = [sampling_params(j.body) for j in chat]
        convs = [j.body["messages"] for j in chat]
        results += zip(chat, llm.chat(convs, params, use_tqdm=False))
    for job, res in results:
        ans = Answer(status=200, done=True)
        for c in sorted(res.outputs, key=lambda c: c.index):
            ans.texts.append(c.text)
            ans.token_ids.append(list(c.token_ids))
            ans.finish.append(c.finish_reason)
        out[job.index] = ans
    return out


def check(
    results: list[tuple[Job, Answer]], expected: dict[int, Answer],
    before: str, after: str, idle: dict[str, float], memory: dict[str, float],
    duration_s: float,
) -> dict[str, Any]:  # fmt: skip
    """Figures of a run and the list of problems found (empty = pass)."""
    problems: list[str] = []
    answered = [(j, a) for j, a in results if not j.cut]
    cut = [(j, a) for j, a in results if j.cut]
    usage_tokens = 0
    for job, ans in answered:
        n = job.body.get("n", 1)
        if ans.status != 200 or not ans.done or ans.error or len(ans.finish) != n:
            problems.append(f"request {job.index}: incomplete {ans.status} {ans.error}")
            continue
        if None in ans.finish:
            problems.append(f"request {job.index}: a choice without finish_reason")
        usage_tokens += (ans.usage or {}).get("completion_tokens", 0)
        want = expected.get(job.index)
        if want is None:
            continue
        got_ids = ans.token_ids if job.kind == "completion" else None
        want_ids = want.token_ids if job.kind == "completion" else None
        if (ans.texts, got_ids, ans.finish) != (want.texts, want_ids, want.finish):
            problems.append(
                f"request {job.index} ({job.kind}) differs from LLM(...): "
                f"{(ans.texts, ans.finish)} != {(want.texts, want.finish)}"
            )
    if any(a.status != 200 for _, a in cut):
        problems.append(f"cut streams answered {sorted({a.status for _, a in cut})}")
    committed = metric(after, SDAR_COMMITTED) - metric(before, SDAR_COMMITTED)
    generated = metric(after, GEN_TOKENS) - metric(before, GEN_TOKENS)
    # The engine counts a block it commits in the step a client hangs up;
    # the front end, which already dropped the request, does not: at most
    # one block per cut sequence (the full run saw 4 = one block in 61 cuts).
    cut_blocks = sum(B * j.body.get("n", 1) for j, _ in cut)
    if not 0 <= committed - generated <= cut_blocks:
        problems.append(f"SDAR committed {committed} vs vLLM generation tokens {generated}")
    cut_cap = sum(j.body["max_tokens"] * j.body.get("n", 1) for j, _ in cut)
    if not usage_tokens <= committed <= usage_tokens + cut_cap:
        problems.append(
            f"SDAR committed {committed} outside [usage {usage_tokens}, + cut {cut_cap}]"
        )
    if any(idle.values()):
        problems.append(f"not idle at the end: {idle}")
    growth = memory.get("growth_second_half_mib", 0.0)
    if growth > MEMORY_BOUND_MIB:
        problems.append(f"server RSS grew {growth:.0f} MiB over the second half")
    return {
        "requests": len(results),
        "answered": len(answered),
        "cut_by_client": len(cut),
        "compared_with_llm": sum(1 for j, _ in answered if j.index in expected),
        "chat": sum(1 for j, _ in results if j.kind == "chat"),
        "streamed": sum(1 for j, _ in results if j.body.get("stream")),
        "errors": len(problems),
        "duration_s": round(duration_s, 1),
        "requests_per_s": round(len(results) / duration_s, 2),
        "committed_tokens": committed,
        "tokens_per_s": round(committed / duration_s, 1),
        "denoising_forwards": metric(after, SDAR_FORWARDS) - metric(before, SDAR_FORWARDS),
        "preemptions": metric(after, "vllm:num_preemptions_total")
        - metric(before, "vllm:num_preemptions_total"),
        "memory": memory,
        "problems": problems[:20],
    }


def soak(
    base: str, server_pid: int, llm: Any, mode: str, seed: int = 0, api_key: str | None = None
) -> dict[str, Any]:
    """One bounded soak run against a live server; returns check()'s figures."""
    cfg = MODES[mode]
    before = metrics_text(base)
    memory = MemorySampler(server_pid)
    t0 = time.monotonic()
    results = asyncio.run(
        drive(base, cfg["duration_s"], cfg["max_requests"], cfg["concurrency"], seed, api_key)
    )
    duration = time.monotonic() - t0
    idle = wait_idle(base)
    mem = memory.stop()
    time.sleep(1.5)  # the front end records stats asynchronously
    after = metrics_text(base)
    answered = [j for j, a in results if not j.cut and a.status == 200]
    random.Random(seed).shuffle(answered)
    sample: list[Job] = []
    budget = cfg["compare_tokens"]
    for job in answered[: cfg["compare"]]:
        cost = job.body["max_tokens"] * job.body.get("n", 1)
        if budget is None or cost <= budget:
            sample.append(job)
            budget = None if budget is None else budget - cost
    answered = sorted(sample, key=lambda j: j.index)
    t1 = time.monotonic()
    expected = offline_answers(llm, answered)
    figures = check(results, expected, before, after, idle, mem, duration)
    figures["offline_check_s"] = round(time.monotonic() - t1, 1)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=sorted(MODES), default="ci")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    # As the tests run it (README "Running"): 1 GiB of CPU KV cache per engine.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from vllm import LLM

    from vllm_sdar.tools.tiny import TinySpec, build

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build(work / MODEL, TinySpec(arch="dense", block_size=B))
        print(f"soak ({args.mode}): starting the server", flush=True)
        with serve_process(server_args(), work, timeout=600) as (base, proc):
            print(f"soak: load for up to {MODES[args.mode]['duration_s']} s", flush=True)
            load_before = psutil.getloadavg()
            # The offline engine starts after the load (an in-process engine
            # core, ample cache): it must not compete with the server's CPU.
            figures = {}
            llm_box: list[Any] = []

            class LazyLLM:
                def __getattr__(self, name: str) -> Any:
                    if not llm_box:
                        print("soak: checking against LLM(...)", flush=True)
                        llm_box.append(
                            LLM(model=str(work / MODEL), dtype="float32", enforce_eager=True,
                                gpu_memory_utilization=0.5, max_model_len=MAX_MODEL_LEN)
                        )  # fmt: skip
                    return getattr(llm_box[0], name)

            figures = soak(base, proc.pid, LazyLLM(), args.mode, args.seed)
            figures["load_average_before"] = load_before
            figures["load_average_after"] = psutil.getloadavg()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(figures, indent=1))
    if args.out:
        args.out.write_text(json.dumps({"mode": args.mode, **figures}, indent=1) + "\n")
    raise SystemExit(1 if figures["problems"] else 0)


if __name__ == "__main__":
    main()
