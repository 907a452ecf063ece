"""Who owns the generator's memory: the order of sleep / wake / refit / cache release / optimizer offload around
generation, log-probs and training, on a real Trainer whose components are wrapped in call recorders; and the
level-2 rule (weights discarded by sleep are refitted before the next generation) on the lifecycle itself."""

from __future__ import annotations

import json
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "backends"))
sys.path.insert(0, HERE)

from launch import launch  # noqa: E402
from lifecycle_worker import run  # noqa: E402
from recording import Recording  # noqa: E402

GENERATION = ["offload_optimizer_state", "empty_cache", "wake", "generate"]
END_GENERATION = ["sleep", "empty_cache", "reload_optimizer_state"]
REFIT = ["empty_cache", "export_hf_weights", "wake_weights", "update_weights", "empty_cache"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = tmp_path_factory.mktemp("lifecycle")
    result = launch(run, (str(work),), world_size=1, err_dir=str(work), timeout=300)
    assert result.ok, result.tail()
    return work


@pytest.fixture(scope="module")
def calls(work):
    return json.loads((work / "calls.json").read_text())


def test_each_step_generates_awake_then_trains_asleep_then_refits(calls):
    start = ["empty_cache", "export_hf_weights", "update_weights", "empty_cache"]  # fit(): the engine starts awake
    validation0 = ["offload_optimizer_state", "empty_cache", "generate"] + END_GENERATION
    step = (GENERATION + ["generate"] + END_GENERATION  # Stage 1 drafts, Stage 2 refinements, then sleep
            + ["get_logprobs", "train"] + REFIT)
    validation = GENERATION + END_GENERATION
    end = ["save_checkpoint", "export_hf_weights",  # the final checkpoint and HF export (not a refit)
           "destroy_model_parallel", "close", "destroy_process_group"]
    assert calls == start + validation0 + step + step + validation + end


def test_the_run_records_its_code_and_versions(work):
    import subprocess

    rec = json.loads((work / "run" / "provenance.jsonl").read_text().splitlines()[-1])
    head = subprocess.run(["git", "-C", HERE, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert rec["git"]["commit"] == head and isinstance(rec["git"]["dirty"], bool)
    assert {"torch", "megatron-core", "transformers"} <= rec["packages"].keys()


def test_policy_never_runs_while_the_generator_is_awake(calls):
    awake = True
    for call in calls:
        if call == "sleep":
            awake = False
        elif call == "wake":
            awake = True
        elif call in ("get_logprobs", "train"):
            assert not awake, calls
        elif call == "generate":
            assert awake, calls


class _Discarding:
    """A generator double for ORDER only: its sleep discards the weights (vLLM level 2)."""

    sleep_discards_weights = True

    def generate(self, *a):
        pass

    def update_weights(self, named):
        list(named)

    def sleep(self):
        pass

    def wake(self, kv_cache=True):
        pass

    def close(self):
        pass


class _Policy:
    def export_hf_weights(self):
        return iter([("w", None)])


def test_level2_sleep_is_refitted_before_the_next_generation():
    from nemo_igrpo.trainer.lifecycle import ColocatedLifecycle

    log: list[str] = []
    lc = ColocatedLifecycle(Recording(_Policy(), log), Recording(_Discarding(), log),
                            release_cache=lambda: log.append("empty_cache"))
    for _ in range(2):  # e.g. validation, then the next step's rollouts, with no training step between
        with lc.generation():
            lc.generator.generate()
    assert log == (["empty_cache", "generate", "sleep", "empty_cache"]
                   + REFIT + ["empty_cache", "wake", "generate", "sleep", "empty_cache"])
    with pytest.raises(RuntimeError, match="without begin_generation"):
        lc.end_generation()


def _interrupted(tmp_path, target: str, method: str, call: int) -> dict:
    from lifecycle_worker import run_interrupted

    result = launch(run_interrupted, (str(tmp_path), target, method, call), world_size=1, err_dir=str(tmp_path),
                    timeout=300)
    assert result.ok, result.tail()
    return json.loads((tmp_path / "interrupted.json").read_text())


def _optimizer_on_device_at_save(calls: list[str]) -> bool:
    """Every offload of the optimizer state was followed by its reload before the checkpoint was written."""
    before = calls[:calls.index("save_checkpoint")]
    return before.count("offload_optimizer_state") == before.count("reload_optimizer_state")


def test_ctrl_c_during_the_rollouts_abandons_the_step_after_the_generator_sleeps(tmp_path):
    # Step 2's drafts: the 3rd generate call (step 1 generated drafts and refinements).
    got = _interrupted(tmp_path, "generator", "generate", 3)
    assert got["steps"] == [1] and got["saved"] == [1]  # step 2 abandoned, step 1 saved
    calls = got["calls"]
    assert calls[calls.index("SIGINT") + 1:calls.index("save_checkpoint")] == END_GENERATION
    assert _optimizer_on_device_at_save(calls) and not got["generating"]


def test_ctrl_c_while_the_lifecycle_switches_memory_owners_is_not_an_abandon(tmp_path):
    """A signal inside a lifecycle transition (here: step 2's optimizer offload, before its generator wakes) must not
    abandon the step there: the transition would stay half done, and the checkpoint be written with the optimizer
    state in host memory and the engine neither awake nor asleep. The step runs on, and is saved when it ends."""
    got = _interrupted(tmp_path, "policy", "offload_optimizer_state", 2)
    assert got["steps"] == [1, 2] and got["saved"] == [2]
    calls = got["calls"]
    assert calls.count("train") == 2 and _optimizer_on_device_at_save(calls) and not got["generating"]
