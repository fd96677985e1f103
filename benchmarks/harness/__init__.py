"""The shared benchmark harness: every study in `benchmarks/` runs on it.

- `env`: process environment (threads, in-process vLLM, LD_PRELOAD) and
  what the results record about the machine (CPU, cores, versions, load);
- `models`: random-weight checkpoints built once and cached;
- `engines`: starting, verifying and timing vLLM `LLM` engines (SDAR under
  the plugin, the AR baseline under stock vLLM);
- `workers`: an object (e.g. a loaded engine) kept alive in its own process
  and called in turn with other workers;
- `timing`: interleaved rounds across compared variants, medians;
- `results`: file names by date + machine, JSON + markdown + PNG output;
- `figures`: matplotlib without a display (panels, saving).

Nothing here imports torch or vLLM at import time: a study must be able to
set the process environment (`env.configure`) before either is imported.
"""
