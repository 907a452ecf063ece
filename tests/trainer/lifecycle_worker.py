"""A real Trainer (demo iGRPO config, tiny random model, HF generator, Megatron policy) whose policy, generator and
cache release are wrapped in recorders, run for two steps with validation; writes the call log."""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_model(path: str) -> str:
    import torch
    from transformers import LlamaForCausalLM

    from nemo_igrpo.backends.tiny_model import demo_model_config
    from nemo_igrpo.data.tokenizer import build_demo_tokenizer

    tok = build_demo_tokenizer(path)
    cfg = demo_model_config(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def _config(work: str, overrides: list[str]):
    """The demo iGRPO recipe on a fresh tiny model, sized to seconds, optimizer offload on, no periodic checkpoint."""
    from nemo_igrpo.config import load_config

    model = write_model(os.path.join(work, "model"))
    return load_config(os.path.join(REPO, "conf", "demo_igrpo.yaml"), [
        f"policy.model_path={model}", f"trainer.output_dir={os.path.join(work, 'run')}", "trainer.save_every=0",
        "trainer.progress_bar=false", "trainer.tensorboard=false", "data.prompts_per_step=2",
        "algorithm.group_size=4", "algorithm.refinement.num_drafts=2", "generation.max_new_tokens=6",
        "algorithm.refinement.max_draft_tokens=6", "reward.num_workers=1",
        "policy.offload_optimizer_during_generation=true", *overrides])


def run(work: str) -> None:
    import torch.distributed as dist
    from megatron.core import parallel_state

    from nemo_igrpo.trainer.loop import Trainer
    from recording import Recording

    cfg = _config(work, ["trainer.max_steps=2", "trainer.validate_every=2", "trainer.num_validation_prompts=2"])
    log: list[str] = []
    trainer = Trainer(cfg)
    lc = trainer.lifecycle
    assert lc.offload_optimizer  # wired from the config
    trainer.policy = lc.policy = Recording(trainer.policy, log)
    trainer.worker.generator = lc.generator = Recording(trainer.worker.generator, log)
    lc.release_cache = lambda: log.append("empty_cache")
    destroy_mp, destroy_pg = parallel_state.destroy_model_parallel, dist.destroy_process_group

    def recorded_destroy_mp(*a, **k):
        log.append("destroy_model_parallel")
        return destroy_mp(*a, **k)

    def recorded_destroy_pg(*a, **k):
        if not a and not k.get("group"):
            log.append("destroy_process_group")
        return destroy_pg(*a, **k)

    parallel_state.destroy_model_parallel = recorded_destroy_mp
    dist.destroy_process_group = recorded_destroy_pg
    try:
        trainer.fit()
    finally:
        trainer.close()
    with open(os.path.join(work, "calls.json"), "w") as f:
        json.dump(log, f)


def run_interrupted(work: str, target: str, method: str, call: int) -> None:
    """A real Trainer (as in ``run``, optimizer offload on, 3 steps, no periodic checkpoint) that receives a Ctrl-C
    (SIGINT) inside the ``call``-th call of ``target``'s ``method`` (``target``: "policy" or "generator"); writes the
    call log, the lifecycle's state after fit() and the steps logged and saved."""
    import signal

    from nemo_igrpo.trainer.loop import Trainer
    from recording import Recording

    cfg = _config(work, ["trainer.max_steps=3", "trainer.validate_every=0"])
    out = cfg.trainer.output_dir
    log: list[str] = []
    trainer = Trainer(cfg)
    lc = trainer.lifecycle
    component = trainer.policy if target == "policy" else trainer.worker.generator
    real = getattr(component, method)
    count = [0]

    def interrupted(*args, **kwargs):
        result = real(*args, **kwargs)
        count[0] += 1
        if count[0] == call:
            log.append("SIGINT")
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10000):  # the handler runs here, inside this call (a backward jump checks for signals)
                pass
        return result

    setattr(component, method, interrupted)
    trainer.policy = lc.policy = Recording(trainer.policy, log)
    trainer.worker.generator = lc.generator = Recording(trainer.worker.generator, log)
    lc.release_cache = lambda: log.append("empty_cache")
    try:
        trainer.fit()
        state = {"generating": lc.generating}
    finally:
        trainer.close()
    with open(os.path.join(out, "metrics.jsonl")) as f:
        steps = [json.loads(line)["step"] for line in f if line.strip()]
    saved = sorted(int(d.split("_")[1]) for d in os.listdir(os.path.join(out, "checkpoints")) if d.startswith("step_"))
    with open(os.path.join(work, "interrupted.json"), "w") as f:
        json.dump({"calls": log, "steps": steps, "saved": saved, **state}, f)
