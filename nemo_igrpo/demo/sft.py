"""Supervised warm start of the tiny demo model on the synthetic arithmetic task: ``igrpo sft --output DIR``.

RL from a random model gets reward 0 everywhere and learns nothing, so the demo first teaches the model the answer
format and the arithmetic, by imitating the teacher of ``teacher.py``: it works half of the problems out and answers
the other half directly, and it refines a previous attempt by building on it. The warm start therefore computes well
when it works a problem out but often does not: the room that RL has to improve it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from nemo_igrpo.algorithms.config import RefinementConfig
from nemo_igrpo.algorithms.igrpo import build_refinement_messages
from nemo_igrpo.backends.tiny_model import demo_model_config
from nemo_igrpo.data.config import DataConfig
from nemo_igrpo.data.jsonl import write_jsonl
from nemo_igrpo.data.prompts import build_messages, encode_messages
from nemo_igrpo.data.synthetic import generate_splits, is_correct
from nemo_igrpo.data.tokenizer import build_demo_tokenizer
from nemo_igrpo.demo.teacher import direct_solution, near_miss, parse_steps, slipped_steps, worked_solution
from nemo_igrpo.errors import OutputExistsError

# Measured on the demo task (conf/demo_*.yaml: operands <= 9, values <= 30) with half the answers direct: 400 steps
# left the worked answers right only 24% of the time (the arithmetic facts were not learned yet), 600 steps 83%
# (greedy), which is what makes "work it out" worth learning for RL. See docs/demo.md.
DEFAULT_STEPS = 600
DEFAULT_BATCH_SIZE = 32
DEFAULT_LR = 3e-3
# Share of single-shot examples the teacher answers without working (teacher.direct_solution).
DEFAULT_DIRECT_FRACTION = 0.5
SUMMARY_FILE = "sft_summary.json"


def _encode_examples(tokenizer, records, data_cfg: DataConfig, direct_fraction: float = 0.0,
                     seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, target ids) per record; the target is the teacher's answer followed by EOS: the worked solution,
    or for about ``direct_fraction`` of the records a direct answer (``teacher.direct_solution``)."""
    rng = random.Random(f"sft-direct-{seed}")
    out = []
    for rec in records:
        prompt = encode_messages(tokenizer, build_messages(rec["problem"], data_cfg.system_prompt, data_cfg.instruction))
        solution = direct_solution(rec["answer"]) if rng.random() < direct_fraction else rec["solution"]
        target = tokenizer.encode(solution, add_special_tokens=False) + [tokenizer.eos_token_id]
        out.append((prompt, target))
    return out


# What the teacher's Stage-2 examples start from: a right worked attempt, a worked attempt with one slip, or a direct
# answer (right or wrong), roughly what the warm start's own best-of-N drafts look like.
DRAFT_KINDS = {"right": 0.5, "slip": 0.3, "direct": 0.2}


def _draft(rec, rng: random.Random) -> str:
    steps = parse_steps(rec["solution"])
    kind = rng.choices(list(DRAFT_KINDS), weights=list(DRAFT_KINDS.values()))[0]
    if kind == "right":
        return worked_solution(steps)
    if kind == "slip":
        return worked_solution(slipped_steps(steps, rng)[0])
    answer = int(rec["answer"])
    return direct_solution(answer if rng.random() < 0.5 else near_miss(answer, rng))


def _encode_refinement_examples(tokenizer, records, data_cfg: DataConfig, refinement: RefinementConfig,
                                fraction: float, seed: int) -> list[tuple[list[int], list[int]]]:
    """iGRPO Stage-2 prompts (the single-shot prompt + a previous attempt, the recipe's template) answered by the
    teacher building on the attempt.

    The attempt is right, has one arithmetic slip, or is a direct answer (``DRAFT_KINDS``). The worked answer keeps
    the attempt's steps up to the slip and repairs it from there (it is the correct solution, which shares that
    prefix), so the model learns to read the attempt and check it, not to ignore it. Shown an attempt, the teacher
    always works the problem through (it never answers a refinement directly)."""
    rng = random.Random(f"sft-refinement-{seed}")
    out = []
    for rec in records:
        if rng.random() >= fraction:
            continue
        draft_ids = tokenizer.encode(_draft(rec, rng), add_special_tokens=False)
        single_shot = build_messages(rec["problem"], data_cfg.system_prompt, data_cfg.instruction)
        messages = build_refinement_messages(single_shot, draft_ids, tokenizer.decode, refinement)
        target = tokenizer.encode(rec["solution"], add_special_tokens=False) + [tokenizer.eos_token_id]
        out.append((encode_messages(tokenizer, messages), target))
    return out


def _collate(examples, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids and labels with -100 on the prompt and the padding (loss on the solution only)."""
    width = max(len(p) + len(t) for p, t in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for i, (p, t) in enumerate(examples):
        seq = torch.tensor(p + t, dtype=torch.long)
        ids[i, : len(seq)] = seq
        labels[i, len(p) : len(seq)] = seq[len(p) :]
    return ids, labels


def evaluate_greedy(model, tokenizer, records, data_cfg: DataConfig, max_new_tokens: int = 96) -> float:
    """Greedy single-shot accuracy: the last ``\\boxed{}`` of each completion compared with the answer as integers."""
    from nemo_igrpo.backends.generation.hf_generator import HFGenerator
    from nemo_igrpo.backends.generation.interface import SamplingParams

    if not records:
        return float("nan")
    prompts = [encode_messages(tokenizer, build_messages(r["problem"], data_cfg.system_prompt, data_cfg.instruction))
               for r in records]
    out = HFGenerator(model, batch_size=100).generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens))
    texts = tokenizer.batch_decode(out.token_ids, skip_special_tokens=True)
    return sum(is_correct(t, r["answer"]) for t, r in zip(texts, records)) / len(records)


def run_sft(
    output_dir: str | Path,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    *,
    data_config: DataConfig | None = None,
    data_dir: str | Path | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lr: float = DEFAULT_LR,
    model_kwargs: dict[str, Any] | None = None,
    eval_limit: int | None = None,
    overwrite: bool = False,
    log_every: int = 0,
    refinement: RefinementConfig | None = None,
    refinement_fraction: float = 1.0,
    direct_fraction: float = DEFAULT_DIRECT_FRACTION,
) -> dict[str, Any]:
    """Build the demo tokenizer, data and tiny Llama, train it for ``steps`` AdamW steps and save an HF model dir.

    ``output_dir`` receives config.json, model.safetensors, generation_config.json, the tokenizer files and
    ``sft_summary.json``; it is written as ``<output_dir>.tmp`` and renamed, so it is either complete or absent. The
    data splits go to ``data_dir`` (default ``<output_dir>/data``) as train/validation/test.jsonl. ``eval_limit``
    test problems (None: all, 0: skip) are decoded greedily afterwards to report accuracy. With ``refinement`` (the
    iGRPO recipe's template), about ``refinement_fraction`` of the training problems (default: all) also appear as
    Stage-2 prompts with a previous attempt (see ``_encode_refinement_examples``; with half of them, 600 steps left
    the refinement copying a right attempt only 43% of the time, with all of them 84%). ``direct_fraction`` of the single-shot examples
    are answered without working (``teacher.direct_solution``; 0 gives the plain worked teacher). Returns the summary:
    model_dir, data files, steps, seed, final_loss, train_seconds, test_accuracy, num_parameters.
    """
    from transformers import GenerationConfig, LlamaForCausalLM

    t_start = time.perf_counter()
    output_dir = Path(output_dir)
    if output_dir.exists() and not overwrite:
        raise OutputExistsError(f"{output_dir} exists (pass overwrite=True / --overwrite to replace it)")
    data_cfg = data_config or DataConfig()
    tmp = output_dir.with_name(output_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    splits = generate_splits(data_cfg.synthetic)
    tokenizer = build_demo_tokenizer(tmp)
    train = _encode_examples(tokenizer, splits["train"], data_cfg, direct_fraction, seed)
    if refinement is not None:
        train += _encode_refinement_examples(tokenizer, splits["train"], data_cfg, refinement, refinement_fraction,
                                             seed)

    cfg = demo_model_config(
        len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **(model_kwargs or {}),
    )
    # fork_rng: seed the initialisation without changing the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    model.train()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, steps // 20)

    def lr_factor(step: int) -> float:
        # Linear warmup then cosine to 10%: a short high-lr phase is what a tiny model needs to learn fast.
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    order = torch.randperm(len(train), generator=gen).tolist()
    cursor, loss_value, ema = 0, float("nan"), None
    t_train = time.perf_counter()
    for step in range(steps):
        if cursor + batch_size > len(order):
            order, cursor = torch.randperm(len(train), generator=gen).tolist(), 0
        ids, labels = _collate([train[i] for i in order[cursor : cursor + batch_size]], tokenizer.pad_token_id)
        cursor += batch_size
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_value = loss.item()
        ema = loss_value if ema is None else 0.9 * ema + 0.1 * loss_value
        if log_every and (step + 1) % log_every == 0:
            print(f"sft step {step + 1}/{steps} loss {ema:.4f} ({time.perf_counter() - t_train:.1f}s)", flush=True)
    train_seconds = time.perf_counter() - t_train
    model.eval()

    test = splits["test"] if eval_limit is None else splits["test"][:eval_limit]
    accuracy = evaluate_greedy(model, tokenizer, test, data_cfg) if test else None

    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(str(tmp), safe_serialization=True)
    data_dir = Path(data_dir) if data_dir is not None else output_dir / "data"
    # Inside the model dir, the splits are written before the rename and so are part of the atomic publish.
    write_dir = tmp / "data" if data_dir == output_dir / "data" else data_dir
    files = {}
    for split, records in splits.items():
        write_jsonl(write_dir / f"{split}.jsonl", records)
        files[split] = str(data_dir / f"{split}.jsonl")

    summary = {
        "model_dir": str(output_dir),
        "data_files": files,
        "steps": steps,
        "seed": seed,
        "batch_size": batch_size,
        "lr": lr,
        "num_examples": len(train),
        "refinement_examples": refinement is not None,
        "direct_fraction": direct_fraction,
        "final_loss": ema,
        "train_seconds": round(train_seconds, 2),
        "test_accuracy": accuracy,
        "num_eval": len(test),
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    if output_dir.exists():
        # A directory cannot be os.replace'd over a non-empty one: move the old one aside first.
        old = output_dir.with_name(output_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(output_dir, old)
        os.replace(tmp, output_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, output_dir)
    summary["total_seconds"] = round(time.perf_counter() - t_start, 2)
    return summary


def add_parser(subparsers) -> None:
    """Register ``igrpo sft``."""
    p = subparsers.add_parser(
        "sft",
        help="supervised warm start of the tiny CPU demo model (no downloads)",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--output", required=True, help="model directory to write (HF format)")
    p.add_argument("--config", default=None,
                   help="recipe whose data settings (and iGRPO refinement template, when enabled) the warm start "
                        "uses, e.g. conf/demo_igrpo.yaml; default: DataConfig defaults, single-shot prompts only")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"optimizer steps (default {DEFAULT_STEPS})")
    p.add_argument("--seed", type=int, default=0, help="model initialisation and batch order seed")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    p.add_argument("--lr", type=float, default=DEFAULT_LR)
    p.add_argument("--direct-fraction", type=float, default=DEFAULT_DIRECT_FRACTION,
                   help="share of single-shot examples the teacher answers without working "
                        f"(default {DEFAULT_DIRECT_FRACTION}; 0: always worked)")
    p.add_argument("--data-dir", default=None, help="where to write train/validation/test.jsonl (default OUTPUT/data)")
    p.add_argument("--task-seed", type=int, default=None, help="seed of the synthetic task (default: DataConfig's)")
    p.add_argument("--eval-limit", type=int, default=None, help="test problems to score greedily (0: skip; default all)")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``igrpo sft``."""
    data_cfg, refinement = DataConfig(), None
    if args.config:
        from nemo_igrpo.config import load_config

        recipe = load_config(args.config)
        data_cfg = recipe.data
        refinement = recipe.algorithm.refinement if recipe.algorithm.refinement.enabled else None
    if args.task_seed is not None:
        data_cfg = replace(data_cfg, synthetic=replace(data_cfg.synthetic, seed=args.task_seed))
    summary = run_sft(
        args.output, steps=args.steps, seed=args.seed, data_config=data_cfg, data_dir=args.data_dir,
        batch_size=args.batch_size, lr=args.lr, eval_limit=args.eval_limit, overwrite=args.overwrite,
        log_every=max(1, args.steps // 10), refinement=refinement, direct_fraction=args.direct_fraction,
    )
    print(json.dumps(summary, indent=2))
    return 0
