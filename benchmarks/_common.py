"""Shared helpers of the benchmark scripts: run metadata, hardware probes (matmul peak, memory bandwidth), the cached
warm-started demo model, medians and JSON output.

The machines these run on are often shared, so every script measures its own hardware ceiling in the same run
(a probe taken yesterday on an idle machine says nothing about today's load) and records the load average.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import torch

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "runs" / "bench"
SFT_DIR = BENCH_DIR / "sft"
# Fewer steps than the demo's 300: the benchmarks only need non-zero rewards (so Stage 1 picks real drafts and
# responses end at EOS like in training), not a good model, and the warm start should cost < 1 minute on 2 cores.
SFT_STEPS = 200


def versions() -> dict[str, str]:
    """Versions of the libraries whose speed is measured."""
    import warnings

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("megatron.core", "transformers", "vllm"):
        try:
            with warnings.catch_warnings():  # megatron warns about missing Apex/TE on import: noise here
                warnings.simplefilter("ignore")
                mod = __import__(name, fromlist=["__version__"])
            out[name] = getattr(mod, "__version__", "?")
        except Exception:  # not installed in this venv (vllm lives in its own)
            pass
    return out


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
                            "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def loadavg() -> list[float]:
    """1/5/15-minute load average (a 2-core machine at load 6 gives each process about a third of a core)."""
    return [round(x, 2) for x in os.getloadavg()]


def median(xs: Iterable[float]) -> float:
    xs = list(xs)
    return float(statistics.median(xs)) if xs else float("nan")


def matmul_peak_flops(dtype: torch.dtype = torch.float32, n: int = 1024, reps: int = 8,
                      device: str = "cpu", clock=time.perf_counter) -> float:
    """Measured dense-matmul FLOP/s: the best of ``reps`` n x n x n matmuls (2 n^3 FLOPs each).

    The best, not the median: it estimates what the hardware can do when the scheduler lets it, which is the right
    denominator for MFU; the load average in the same JSON says how contended the machine was. ``clock``: pass
    ``time.process_time`` when the timings it is compared with are CPU time.
    """
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    torch.matmul(a, b)  # first call pays for thread pool start / kernel selection
    sync()
    best = float("inf")
    for _ in range(reps):
        t0 = clock()
        torch.matmul(a, b)
        sync()
        best = min(best, clock() - t0)
    return 2.0 * n**3 / best


def memory_bandwidth(nbytes: int = 256 * 1024**2, reps: int = 5, device: str = "cpu") -> float:
    """Measured copy bandwidth in bytes/s (read + write counted): best of ``reps`` copies of a buffer much larger
    than any cache, so it is DRAM (or HBM) speed."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    dst.copy_(src)
    sync()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        dst.copy_(src)
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * nbytes / best


def ensure_sft_model(path: Path = SFT_DIR, steps: int = SFT_STEPS) -> Path:
    """The warm-started tiny demo model, made once and reused (``run_sft`` publishes the directory atomically, so a
    half-written one is never picked up)."""
    if not (path / "config.json").is_file():
        from nemo_igrpo.demo.sft import run_sft

        print(f"[bench] warm-starting the tiny model into {path} ({steps} SFT steps, cached for later runs)",
              flush=True)
        run_sft(path, steps=steps, seed=0, eval_limit=0)
    return path


# The recipe whose prompts (data files, system prompt, instruction) a benchmark uses for each named --model.
MODEL_RECIPES = {"demo": "demo_grpo", "smollm2": "smollm2_word_arith_grpo"}
SMOLLM2 = "smollm2-135m-instruct"


def resolve_model(model: str, on_gpu: bool) -> Path | None:
    """The model directory a benchmark's ``--model`` names: 'demo' (the cached warm start), 'smollm2'
    (SmolLM2-135M-Instruct, prepared once by ``igrpo prepare-model`` into $IGRPO_CACHE_DIR), 'qwen2-1.5b' (a random
    Qwen2-shaped model, GPU only: None and a 'skipped' line without CUDA, so a script running every benchmark goes
    on), or an HF directory."""
    if model == "demo":
        return ensure_sft_model()
    if model == "smollm2":
        from nemo_igrpo.backends.conversion.prepare_model import ensure_prepared

        return ensure_prepared(SMOLLM2)
    if model == "qwen2-1.5b":
        if not on_gpu:
            print("skipped: --model qwen2-1.5b is a GPU measurement (bf16, ~1.7 B parameters) and CUDA is absent")
            return None
        return write_random_model_dir(BENCH_DIR / "qwen2_1p5b", qwen2_1p5b_config())
    return Path(model)


def recipe_prompts(model_dir: Path, recipe: str, n: int) -> list[list[int]]:
    """``n`` training prompts of ``conf/<recipe>.yaml`` as the trainer encodes them: its data (JSONL files, or the
    synthetic demo task), system prompt and instruction, through the model's own chat template."""
    from transformers import AutoTokenizer

    from nemo_igrpo.config import load_config
    from nemo_igrpo.data.prompts import build_messages, encode_messages, load_prompts
    from nemo_igrpo.data.synthetic import generate_splits

    data = load_config(REPO / "conf" / f"{recipe}.yaml").data
    if data.train_file:
        problems = [r.problem for r in load_prompts(REPO / data.train_file)]
    else:
        problems = [r["problem"] for r in generate_splits(data.synthetic)["train"]]
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    return [encode_messages(tok, build_messages(problems[i % len(problems)], data.system_prompt, data.instruction))
            for i in range(n)]


def count_params(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """Parameter counts for the FLOP and byte models: total, and 'matmul' = total minus the input embedding (a
    lookup, no FLOPs; with tied embeddings the table is counted once, as the LM head)."""
    total = sum(t.numel() for t in state.values())
    embed = sum(t.numel() for k, t in state.items() if k.endswith("embed_tokens.weight"))
    tied = not any(k.endswith("lm_head.weight") for k in state)
    return {"total": total, "matmul": total if tied else total - embed,
            "bytes": sum(t.numel() * t.element_size() for t in state.values())}


def qwen2_1p5b_config(**overrides):
    """A Qwen2-shaped 1.66 B-parameter model config (random weights; no download), for the GPU rows: hidden 2048, 24 layers,
    16 heads, 2 KV heads, MLP 5504, vocabulary 151936."""
    from transformers import Qwen2Config

    kw = dict(vocab_size=151936, hidden_size=2048, intermediate_size=5504, num_hidden_layers=24,
              num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6,
              rope_theta=1e6, tie_word_embeddings=False, torch_dtype="bfloat16")
    kw.update(overrides)
    return Qwen2Config(**kw)


def write_random_model_dir(path: Path, config, dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> Path:
    """An HF directory with randomly initialised weights of ``config`` and the demo tokenizer (vLLM needs one; its
    vocabulary is smaller than the model's, which does not matter for token-id prompts)."""
    if (path / "config.json").is_file():
        return path
    from transformers import AutoModelForCausalLM

    from nemo_igrpo.data.tokenizer import build_demo_tokenizer

    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(str(tmp), safe_serialization=True)
    build_demo_tokenizer(tmp)
    os.replace(tmp, path)
    return path


def write_results(out: str | None, name: str, settings: dict[str, Any], results: Any,
                  extra_meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON every benchmark writes: what ran, where, when, under which load, and the numbers."""
    doc = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(),
           "versions": versions(), "loadavg_at_end": loadavg(), "argv": sys.argv, "settings": settings,
           **(extra_meta or {}), "results": results}
    path = Path(out) if out else BENCH_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"[bench] wrote {path}")
    return doc


def fmt_table(rows: list[list[Any]], header: list[str]) -> str:
    """A plain fixed-width table (the scripts print it; the docs copy it)."""
    cells = [[str(h) for h in header]] + [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
