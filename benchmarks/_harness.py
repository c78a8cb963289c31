"""What every benchmark repeats, in one place; a benchmark file holds only its measurement.

- **The machine**: :func:`machine_info` (CPU, usable cores, GPU, library versions, load
  average), :func:`quick_gflops` (the fp32 ``torch.mm`` rate right now), :func:`loadavg`.
- **Is it quiet?** :func:`wait_for_settled_load` before the first run, :func:`is_quiet` and
  :func:`quiet_note` to judge (or refuse to judge) the targets afterwards.
- **Interleaved rounds**: :func:`interleaved_rounds` runs every job once per round, the order
  rotated between rounds (A/B, B/A, ...), and records the ``torch.mm`` rate and load average
  just before each run; :func:`rotated` for in-process A/B loops; :func:`median_ratio` for
  "median over rounds of the per-round ratio" (the two runs of a round share the machine's
  mood, runs of different rounds need not).
- **A spec in a fresh process**: :func:`run_spec` starts ``python <script> --_worker <json>``
  with fixed thread settings and parses the one result line that :func:`worker_reply` prints;
  the reply carries the child's own peak RSS (:func:`peak_rss_mb`, its VmHWM).
  :func:`run_child` runs any command and reports its exit code, wall time and the end of its
  output.
- **Results**: :func:`write_results` writes ``benchmarks/results/<name>.json`` and ``.md``,
  both naming the machine they ran on.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Hashable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
RESULT_TAG = "BENCH_RESULT "
J = TypeVar("J", bound=Hashable)


# ---------------------------------------------------------------------------- the machine
def sha256_file(path: str | Path) -> str:
    """csekit's file checksum (imported on use: a worker child stays light to start)."""
    from csekit.data.fetch import sha256_file as checksum

    return checksum(path)


def shared_root() -> Path:
    return Path(os.environ.get("CSEKIT_SHARED", REPO_ROOT.parent / "shared")).resolve()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def loadavg() -> list[float]:
    """The 1, 5 and 15-minute load averages, rounded to 2 decimals."""
    return [round(x, 2) for x in os.getloadavg()]


def machine_info() -> dict[str, Any]:
    """CPU model, usable cores, GPU (if any) and the versions of the libraries that matter."""
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "load_avg_1_5_15": os.getloadavg(),  # the machine is shared: how loaded it was
    }
    versions = {}
    for name in ("torch", "transformers", "accelerate", "sentence_transformers", "numpy", "scipy"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - a missing optional library is recorded, not fatal
            versions[name] = None
    import csekit

    versions["csekit"] = csekit.__version__
    info["versions"] = versions
    return info


def quick_gflops() -> float:
    """fp32 matrix-product rate right now (a 2048x384 @ 384x1536 product, best of 10)."""
    import torch

    a, b = torch.randn(2048, 384), torch.randn(384, 1536)
    best = float("inf")
    with torch.inference_mode():
        torch.mm(a, b)
        for _ in range(10):
            t = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t)
    return 2 * 2048 * 384 * 1536 / best / 1e9


# ---------------------------------------------------------------------------- quiet machine
def wait_for_settled_load(cores: int, max_wait_s: float, poll_s: float = 5.0) -> float:
    """Wait (at most ``max_wait_s``) until the 1-minute load average is at most half the cores.

    The load average decays over minutes: a benchmark started right after another one (or a
    build) would otherwise see the previous job's threads in ``load_before`` and mark a run
    on an otherwise idle machine as not quiet. Returns the seconds waited.
    """
    start = time.monotonic()
    while os.getloadavg()[0] > 0.5 * cores and time.monotonic() - start < max_wait_s:
        time.sleep(poll_s)
    return time.monotonic() - start


def is_quiet(load_before: Sequence[float], load_after: Sequence[float], threads: int,
             cores: int) -> bool:
    """Whether other work shared the machine: the 1-minute load before the first run, and the
    one after the last run less the benchmark's own worker threads (which were running up to
    that moment), are each at most half the cores."""
    foreign = max(load_before[0], load_after[0] - threads)
    return foreign <= 0.5 * cores


def quiet_note(load_before: Sequence[float], load_after: Sequence[float], threads: int,
               cores: int | None = None) -> str | None:
    """A results note when the machine was not quiet (None when it was)."""
    cores = cores or usable_cores()
    if is_quiet(load_before, load_after, threads, cores):
        return None
    return (f"The machine was not quiet: 1-minute load average {load_before[0]} before and "
            f"{load_after[0]} after (own {threads} thread(s) included), on {cores} cores. "
            f"These numbers do not judge the targets; re-run on a quiet machine.")


# ---------------------------------------------------------------------------- rounds
def rotated(items: Sequence[J], k: int) -> list[J]:
    """``items`` started at position ``k`` (mod its length): round k's order."""
    k %= len(items)
    return [*items[k:], *items[:k]]


def interleaved_rounds(jobs: Sequence[J], repeats: int, run: Callable[[J, int], dict[str, Any]],
                       describe: Callable[[J, dict[str, Any]], str] | None = None,
                       ) -> tuple[dict[J, list[dict[str, Any]]], list[dict[str, Any]]]:
    """Run every job once per round, the order rotated by one between rounds.

    ``run(job, round_index)`` returns a result dict; the ``torch.mm`` rate and load average
    taken just before the run are added to it (``mm_gflops_before``, ``loadavg_before``,
    ``round``, 1-based). Returns the results per job (in round order) and the schedule (one
    row per run, in the order they ran). ``describe(job, result)`` makes the progress line.
    """
    runs: dict[J, list[dict[str, Any]]] = {j: [] for j in jobs}
    schedule: list[dict[str, Any]] = []
    for rnd in range(repeats):
        for job in rotated(jobs, rnd):
            mm, load = quick_gflops(), loadavg()
            t = time.perf_counter()
            r = run(job, rnd)
            r.update(mm_gflops_before=mm, loadavg_before=load, round=rnd + 1)
            runs[job].append(r)
            schedule.append({"round": rnd + 1, "job": job, "mm_gflops": mm, "loadavg": load,
                             "wall_s": round(time.perf_counter() - t, 2)})
            what = describe(job, r) if describe else str(job)
            print(f"round {rnd + 1}/{repeats} {what} (run {time.perf_counter() - t:.0f} s; "
                  f"torch.mm before {mm:.0f} GFLOP/s, load {load[0]})", flush=True)
    return runs, schedule


def median_ratio(num: Sequence[dict[str, Any]], den: Sequence[dict[str, Any]],
                 key: str = "step_s", den_key: str | None = None) -> tuple[float, list[float]]:
    """Median over rounds of ``num[i][key] / den[i][den_key or key]``, and the per-round
    ratios (round i of both sequences ran minutes apart at most, under the same load)."""
    dk = den_key or key
    ratios = [a[key] / b[dk] for a, b in zip(num, den, strict=True)]
    return statistics.median(ratios), ratios


# ---------------------------------------------------------------------------- processes
def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB.

    Linux: the process's own VmHWM (reset by execve), not ``ru_maxrss``, which a child keeps
    from its parent at fork time. Elsewhere ``ru_maxrss`` (KiB on Linux, bytes on macOS).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024.0 if sys.platform != "darwin" else kib / 2**20


def current_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mb()


def bench_env(threads: int | None = None, cpu_only: bool = False,
              **extra: str) -> dict[str, str]:
    """The environment of a benchmark child: offline, no tokenizer threads, fixed threads."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", **extra)
    src = str(REPO_ROOT / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    if cpu_only:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def worker_reply(result: dict[str, Any]) -> None:
    """Print a worker's result as the one line :func:`run_spec` reads (its peak RSS added)."""
    print(RESULT_TAG + json.dumps({**result, "process_peak_rss_mb": peak_rss_mb()}), flush=True)


def run_spec(script: str | Path, spec: dict[str, Any], timeout: float,
             env: dict[str, str] | None = None, flag: str = "--_worker") -> dict[str, Any]:
    """Run ``python script --_worker <spec as JSON>`` in a fresh process; return its reply.

    The worker answers with :func:`worker_reply`; a worker that exits without one raises with
    the end of its output.
    """
    cmd = [sys.executable, str(script), flag, json.dumps(spec)]
    proc = subprocess.run(cmd, env=env or bench_env(), capture_output=True, text=True,
                          timeout=timeout, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    tail = (proc.stderr or proc.stdout)[-3000:]
    raise RuntimeError(f"worker {Path(script).name} failed (exit {proc.returncode}):\n{tail}")


def run_child(argv: Sequence[str], env: dict[str, str] | None = None,
              timeout: float | None = None) -> dict[str, Any]:
    """Run a command: wall time, exit code, its last stdout line, the end of its stderr."""
    start = time.perf_counter()
    proc = subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
    out = proc.stdout.strip()
    return {"wall_s": round(time.perf_counter() - start, 3), "rc": proc.returncode,
            "stdout": out.splitlines()[-1:] if out else [],
            "stderr_tail": proc.stderr.strip().splitlines()[-2:]}


# Python source a ``python -c`` child can start with to report its own peak RSS: hwm() in MiB.
HWM_SNIPPET = ("def hwm():\n    for ln in open('/proc/self/status'):\n"
               "        if ln.startswith('VmHWM:'):\n            return int(ln.split()[1]) / 1024\n")


def command_line(argv: Sequence[str] | None, script: str | None = None) -> str:
    """How the benchmark was started (for the results)."""
    name = Path(script or sys.argv[0]).name
    return " ".join([name, *(argv if argv is not None else sys.argv[1:])])


# ---------------------------------------------------------------------------- results
def write_results(name: str, payload: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``benchmarks/results/<name>.json`` and ``.md`` (machine info added to both;
    a payload that already has a ``machine``, e.g. a re-render, keeps its own)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine_info(), **payload}
    jpath = RESULTS_DIR / f"{name}.json"
    mpath = RESULTS_DIR / f"{name}.md"
    jpath.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    mpath.write_text(markdown.rstrip() + "\n\n" + machine_line(payload["machine"]) + "\n")
    return jpath, mpath


def machine_line(m: dict[str, Any]) -> str:
    v = m.get("versions") or {}
    return (f"Machine: {m.get('cpu')}, {m.get('cores')} cores, GPU: {m.get('gpu') or 'none'}; "
            f"torch {v.get('torch')}, transformers {v.get('transformers')}, "
            f"sentence-transformers {v.get('sentence_transformers')}; {m.get('date')}")


# ---------------------------------------------------------------------------- training steps
def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


class StepClock:
    """Time stamps at the end of every optimiser step, memory read at the last one.

    A training benchmark calls :meth:`tick` at the end of each step (a callback, a wrapped
    step function) and records what the step ran in ``pad_lens``, ``groups`` and
    ``real_tokens``; :meth:`result` leaves the first ``warmup`` steps out.
    """

    def __init__(self, device: str, total_steps: int) -> None:
        self.device, self.total = device, total_steps
        self.stamps: list[float] = []
        self.pad_lens: list[int] = []  # padded length of the whole batch
        self.groups: list[list[tuple[int, int]]] = []  # (rows, padded length) actually run
        self.real_tokens: list[int] = []
        self.peak_rss_mb: float | None = None
        self.peak_gpu_mb: float | None = None

    def tick(self) -> None:
        sync(self.device)
        self.stamps.append(time.perf_counter())
        if len(self.stamps) == self.total:  # before any end-of-run saving
            self.peak_rss_mb = peak_rss_mb()
            if self.device == "cuda":
                import torch

                self.peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20

    def result(self, start: float, warmup: int) -> dict[str, Any]:
        """Per-step times after ``warmup``, the run's step time (t(end) - t(warmup)) / steps,
        and what each step ran."""
        steps = len(self.stamps) - warmup
        t_warm = self.stamps[warmup - 1] if warmup > 0 else start
        return {"step_times": self.step_times(start, warmup),
                "step_s": (self.stamps[-1] - t_warm) / steps,
                "pad_lens": self.pad_lens, "groups": self.groups,
                "real_tokens": self.real_tokens,
                "peak_rss_mb": self.peak_rss_mb, "peak_gpu_mb": self.peak_gpu_mb}

    def step_times(self, start: float, warmup: int) -> list[float]:
        edges = [start, *self.stamps]
        times = [b - a for a, b in itertools.pairwise(edges)]
        return times[warmup:]



# ---------------------------------------------------------------------------- model FLOPs
# Dense bf16 peak (no sparsity) by card name, TFLOP/s.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0}


def peak_for(gpu: str | None, override: float | None) -> float | None:
    if override:
        return override
    if not gpu:
        return None
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in gpu), None)


def model_shape(model_path: str) -> dict[str, int]:
    """Layers, width, FFN width and per-token non-embedding parameters of an HF encoder."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_path)
    h, i, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    per_layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 2 * (2 * h)
    return {"layers": n, "hidden": h, "intermediate": i, "non_embedding_params": n * per_layer}


def step_flops(shape: dict[str, int], batch: int, seq_len: float) -> float:
    """Training FLOPs of one step over 2B sequences of length ``seq_len`` (see train_throughput's doc)."""
    return group_flops(shape, [(2 * batch, seq_len)])


def group_flops(shape: dict[str, int], groups: list[tuple[int, float]],
                cls_only_last: bool = False) -> float:
    """Training FLOPs of forward + backward over groups of (rows, padded length).

    ``cls_only_last``: the lean forward's [CLS] pooling, whose last layer computes keys and
    values for every token but the query, attention output, projection, LayerNorms and
    feed-forward for position 0 only; its FLOPs are counted as that work (the skipped work
    is not model FLOPs the step needs, and counting it would inflate the MFU).
    """
    layers, h = shape["layers"], shape["hidden"]
    per_layer = shape["non_embedding_params"] / layers
    tokens = sum(r * n for r, n in groups)
    full = layers - 1 if cls_only_last else layers
    dense = 6.0 * per_layer * full * tokens
    attention = 12.0 * full * h * sum(r * n**2 for r, n in groups)
    if cls_only_last:
        kv = 2 * (h * h + h)  # key and value projections, every token
        dense += 6.0 * (kv * tokens + (per_layer - kv) * sum(r for r, _ in groups))
        attention += 12.0 * h * tokens  # one query per row against its n keys
    return dense + attention


# ---------------------------------------------------------------------------- inputs
def sample_corpus(corpus: Path, n: int, seed: int, dest: Path) -> Path:
    """Write a seeded sample of ``n`` non-blank lines of ``corpus`` to ``dest``."""
    lines = [s for s in corpus.read_text(encoding="utf-8").splitlines() if s.strip()]
    if len(lines) < n:
        raise SystemExit(f"{corpus} has {len(lines)} sentences, need {n}; lower --steps")
    dest.write_text("\n".join(random.Random(seed).sample(lines, n)) + "\n", encoding="utf-8")
    return dest


def random_bert_base(dest: Path, tokenizer_from: str) -> Path:
    """A BERT-base-shaped model with random weights (``BertConfig()``), saved with a tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig()).save_pretrained(str(dest))
    AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(str(dest))
    return dest
