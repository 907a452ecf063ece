"""A short iGRPO run on a tiny Nemotron-H, as a user runs it (``igrpo train`` in a subprocess, HF generation on CPU):
finite rewards, the refit mismatch logged every step and small, a checkpoint that reloads into the same next step,
and a final HF export equal to converting the last checkpoint with ``igrpo convert megatron-to-hf``."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainer"))

from trainer_cli_helpers import igrpo_train_cmd, run_train  # noqa: E402

pytestmark = pytest.mark.slow

SFT_STEPS = 150


def build_tiny_nemotron_h(out: Path, steps: int = SFT_STEPS, seed: int = 0) -> Path:
    """The demo tokenizer and a tiny Nemotron-H ("M*M-") warm-started on the demo task's prompts and solutions, so
    that rewards vary between rollouts and steps have a gradient."""
    import transformers

    from nemo_igrpo.config import load_config
    from nemo_igrpo.data.prompts import build_messages, encode_messages
    from nemo_igrpo.data.synthetic import generate_splits
    from nemo_igrpo.data.tokenizer import build_demo_tokenizer
    from nemo_igrpo.demo.sft import _encode_refinement_examples

    # The recipe the run trains with: its prompts, and its Stage-2 prompts answered by building on the attempt (a
    # model that never saw a Stage-2 prompt scores 0 on every refinement, and then no step has a gradient).
    recipe = load_config(Path(__file__).resolve().parents[2] / "conf" / "demo_igrpo.yaml")
    data = recipe.data
    tok = build_demo_tokenizer(out)
    records = generate_splits(data.synthetic)["train"]
    examples = [(encode_messages(tok, build_messages(rec["problem"], data.system_prompt, data.instruction)),
                 tok.encode(rec["solution"], add_special_tokens=False) + [tok.eos_token_id]) for rec in records]
    examples += _encode_refinement_examples(tok, records, data, recipe.algorithm.refinement, 1.0, seed)
    cfg = transformers.NemotronHConfig(
        vocab_size=len(tok), hidden_size=64, hybrid_override_pattern="M*M-", num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, intermediate_size=128, ssm_state_size=16, mamba_num_heads=8,
        mamba_head_dim=16, n_groups=2, conv_kernel=4, chunk_size=32, max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = transformers.NemotronHForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        batch = [examples[int(i)] for i in torch.randint(len(examples), (16,), generator=gen)]
        width = max(len(p) + len(t) for p, t in batch)
        ids = torch.full((len(batch), width), tok.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        for row, (p, t) in enumerate(batch):
            ids[row, : len(p) + len(t)] = torch.tensor(p + t)
            labels[row, len(p): len(p) + len(t)] = torch.tensor(t)
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(out)
    return out


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("nh_e2e")
    model = build_tiny_nemotron_h(root / "model")
    out = root / "run"
    # Completions long enough for the warm start's whole answer (so format rewards vary), 6 refinements per prompt
    # (with 2, every refinement of this weak warm start got the same reward: no step had a gradient), 3 steps, a
    # checkpoint at 2.
    cmd = igrpo_train_cmd(model, out, "trainer.max_steps=3", "trainer.save_every=2", "generation.max_new_tokens=56",
                          "algorithm.refinement.max_draft_tokens=56", "algorithm.group_size=8")
    first = run_train(cmd)
    assert first.returncode == 0, first.stderr[-3000:]
    uninterrupted = read_metrics(out)
    shutil.copytree(out / "hf", root / "hf_first")
    # Drop the final checkpoint: the resumed run reloads step 2 and must train step 3 again, identically.
    shutil.rmtree(out / "checkpoints" / "step_000003")
    resumed = run_train(cmd + ["trainer.resume=true"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return {"model": model, "out": out, "first": uninterrupted, "resumed": read_metrics(out),
            "resumed_stderr": resumed.stderr, "hf_first": root / "hf_first", "root": root}


def test_rewards_finite_and_refit_mismatch_small(runs):
    rows = runs["first"]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        for key in ("reward/mean", "reward/draft_best", "loss", "grad_norm", "entropy", "refit/logprob_mismatch"):
            assert r[key] is not None and torch.isfinite(torch.tensor(float(r[key]))), key
        # HF's NemotronH samples the tokens, the Megatron hybrid model scores them: same weights, same maths.
        assert r["refit/logprob_mismatch"] < 1e-4
    assert any(r["grad_norm"] > 0 for r in rows)
    print("nemotron-h e2e:", [{k: r[k] for k in ("step", "reward/mean", "refit/logprob_mismatch", "time/step")}
                              for r in rows])


def test_checkpoint_reloads_into_the_same_next_step(runs):
    assert "resumed from" in runs["resumed_stderr"]
    want = runs["first"][-1]
    got = [r for r in runs["resumed"] if r["step"] == 3][-1]
    for key in ("reward/mean", "loss", "grad_norm", "refit/logprob_mismatch"):
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key


def test_final_export_equals_converting_the_checkpoint(runs, tmp_path):
    from safetensors.torch import load_file

    from nemo_igrpo.backends.conversion.nemotron_h import canonical_hf_name
    from nemo_igrpo.cli import main

    out = runs["out"]
    assert main(["convert", "megatron-to-hf", "--megatron", str(out / "checkpoints" / "step_000003"),
                 "--hf-config", str(runs["model"]), "--out", str(tmp_path / "converted")]) == 0
    exported = load_file(out / "hf" / "model.safetensors")
    converted = load_file(tmp_path / "converted" / "model.safetensors")
    assert sorted(exported) == sorted(converted)
    for name, t in exported.items():
        assert t.dtype == converted[name].dtype and torch.equal(t, converted[name]), name
    assert exported["backbone.layers.0.mixer.A_log"].dtype == torch.float32
    # The resumed run ends where the uninterrupted one did.
    first = load_file(runs["hf_first"] / "model.safetensors")
    assert all(torch.allclose(first[k], exported[k], atol=1e-6, rtol=0) for k in first)
    # And training moved the weights away from the warm start.
    start = load_file(runs["model"] / "model.safetensors")
    start = {canonical_hf_name(k): v for k, v in start.items()}
    assert sorted(start) == sorted(exported)
    assert any(not torch.equal(start[k], exported[k]) for k in start)
