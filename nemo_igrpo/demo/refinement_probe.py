"""How a model uses a draft: iGRPO's two stages run on the test problems, broken down by the kind of draft the
refinement was given (``python -m nemo_igrpo.demo.refinement_probe DEMO_DIR``).

For each test problem the trainer's own ``RolloutWorker`` samples N drafts, keeps the best-rewarded one and samples G
refinements of it, exactly as an iGRPO training step does (same template, reward, selection and seeding). Each
refinement is then classified by its draft: worked or direct, right or wrong. Per kind: how often the refinement is
right, and how often it is a verbatim copy of the draft. A copier scores the draft's accuracy; a refinement that is
right after a wrong draft has repaired it.

Run on the warm start and on the trained policies of one ``igrpo demo`` output; writes ``refinement_probe.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from nemo_igrpo.data.synthetic import is_correct
from nemo_igrpo.demo.teacher import DIRECT_REASONING

KINDS = ("worked, right", "worked, wrong", "direct, right", "direct, wrong")
PROBLEMS_PER_CALL = 25


def draft_kind(draft: str, answer: str) -> str:
    style = "direct" if DIRECT_REASONING in draft else "worked"
    return f"{style}, {'right' if is_correct(draft, answer) else 'wrong'}"


def tally(rows: list[tuple[str, bool, bool]]) -> dict[str, dict[str, float]]:
    """(draft kind, refinement right, refinement == draft) per refinement -> per kind: n, accuracy, copy rate."""
    out = {}
    for kind in KINDS:
        sel = [(ok, copy) for k, ok, copy in rows if k == kind]
        out[kind] = {"n": len(sel), "accuracy": sum(ok for ok, _ in sel) / len(sel) if sel else None,
                     "copied": sum(c for _, c in sel) / len(sel) if sel else None}
    return out


def probe_model(model_dir: str | Path, recipe, records, seed: int = 0) -> dict[str, Any]:
    """Both stages on ``records`` with the recipe's settings; the per-kind table and the overall accuracies."""
    from transformers import AutoTokenizer

    from nemo_igrpo.backends.generation.hf_generator import HFGenerator
    from nemo_igrpo.backends.generation.interface import SamplingParams
    from nemo_igrpo.rewards.reward_fn import RewardFunction
    from nemo_igrpo.trainer.rollout import RolloutWorker

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    gen = recipe.generation
    sampling = SamplingParams(temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k,
                              max_new_tokens=gen.max_new_tokens)
    rows: list[tuple[str, bool, bool]] = []
    draft_acc: list[float] = []
    with RewardFunction(recipe.reward) as reward_fn:
        worker = RolloutWorker(HFGenerator(str(model_dir), batch_size=gen.batch_size), reward_fn, tokenizer,
                               recipe.algorithm, sampling, recipe.data.system_prompt, recipe.data.instruction, seed)
        g = worker.budget.num_refinements
        for start in range(0, len(records), PROBLEMS_PER_CALL):
            chunk = records[start:start + PROBLEMS_PER_CALL]
            out = worker.run(chunk, step=start // PROBLEMS_PER_CALL, shard=0)
            draft_acc.append(out.metrics["accuracy/draft_mean"] * len(chunk))
            for i, rec in enumerate(chunk):
                draft = out.best_draft_texts[i]
                kind = draft_kind(draft, rec.answer)
                for ids in out.response_ids[i * g:(i + 1) * g]:
                    text = tokenizer.decode(ids, skip_special_tokens=True)
                    rows.append((kind, is_correct(text, rec.answer), text.strip() == draft.strip()))
    by_kind = tally(rows)
    n = len(rows)
    best_right = sum(v["n"] for k, v in by_kind.items() if k.endswith("right")) / n
    return {"model_dir": str(model_dir), "problems": len(records), "draft_mean_accuracy": sum(draft_acc) / len(records),
            "best_draft_accuracy": best_right, "refinement_accuracy": sum(ok for _, ok, _ in rows) / n,
            "repaired": (sum(ok for k, ok, _ in rows if k.endswith("wrong"))
                         / max(1, sum(1 for k, _, _ in rows if k.endswith("wrong")))),
            "by_draft_kind": by_kind}


def probe_demo(demo_dir: str | Path, conf: str | Path, seed: int = 0) -> dict[str, Any]:
    """The warm start and both trained policies of one ``igrpo demo`` output, on the task's test split."""
    from nemo_igrpo.config import load_config
    from nemo_igrpo.data.prompts import PromptRecord
    from nemo_igrpo.data.synthetic import generate_splits

    d = Path(demo_dir)
    recipe = load_config(conf)
    records = [PromptRecord(id=r["id"], problem=r["problem"], answer=str(r["answer"]))
               for r in generate_splits(recipe.data.synthetic)["test"]]
    models = {"warm start (SFT)": d / "sft", "grpo": d / "grpo" / "hf", "igrpo": d / "igrpo" / "hf"}
    result = {label: probe_model(path, recipe, records, seed) for label, path in models.items() if path.is_dir()}
    (d / "refinement_probe.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nemo_igrpo.demo.refinement_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("demo_dir", help="an `igrpo demo` output directory")
    p.add_argument("--config", default=str(Path(__file__).resolve().parents[2] / "conf" / "demo_igrpo.yaml"),
                   help="the iGRPO recipe whose Stage-2 settings to use (default: conf/demo_igrpo.yaml)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed of the probe")
    args = p.parse_args(argv)
    result = probe_demo(args.demo_dir, args.config, args.seed)
    for label, r in result.items():
        print(f"{label}: drafts {r['draft_mean_accuracy']:.3f}, best draft {r['best_draft_accuracy']:.3f}, "
              f"refinement {r['refinement_accuracy']:.3f}, repaired {r['repaired']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
