"""`igrpo train` as a user runs it, against an output directory that already holds a run: a fresh start is refused
without touching anything (or replaces the run with trainer.overwrite=true), resume falls back past a damaged newest
checkpoint, and a crafted checkpoint cannot run code under `igrpo train trainer.resume=true` or `igrpo convert`."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch

from trainer_cli_helpers import igrpo_train_cmd, run_train, train_env

pytestmark = pytest.mark.slow


def read_steps(run_dir):
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def snapshot(root):
    """Every file under ``root`` with its content hash and modification time."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = (hashlib.sha256(f.read()).hexdigest(), os.stat(p).st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def earlier_run(warm_model, tmp_path_factory):
    """A finished 3-step run that kept a checkpoint after every step."""
    out = tmp_path_factory.mktemp("earlier") / "run"
    proc = run_train(igrpo_train_cmd(warm_model, out, "trainer.max_steps=3", "trainer.save_every=1",
                                     "trainer.keep_checkpoints=0", "trainer.tensorboard=true"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture
def run_copy(earlier_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(earlier_run, out)
    return out


def test_fresh_start_into_a_run_is_refused_and_touches_nothing(run_copy, warm_model):
    before = snapshot(run_copy)
    proc = run_train(igrpo_train_cmd(warm_model, run_copy, "trainer.max_steps=2"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: config key 'trainer.output_dir'") and "already holds a run" in last
    assert "trainer.resume=true" in last and "trainer.overwrite=true" in last
    assert snapshot(run_copy) == before


def test_overwrite_replaces_the_earlier_run(run_copy, warm_model):
    (run_copy / "notes.txt").write_text("mine")
    proc = run_train(igrpo_train_cmd(warm_model, run_copy, "trainer.max_steps=2", "trainer.overwrite=true",
                                     "trainer.save_every=0"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_steps(run_copy) == [1, 2]
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == ["step_000002"]
    assert (run_copy / "notes.txt").read_text() == "mine"  # only what a run writes is deleted


def test_resume_falls_back_past_a_truncated_shard(run_copy, warm_model):
    policy = run_copy / "checkpoints" / "step_000003" / "policy"
    shard = max(policy.glob("*.distcp"), key=lambda p: p.stat().st_size)
    os.truncate(shard, shard.stat().st_size // 2)
    proc = run_train(igrpo_train_cmd(warm_model, run_copy, "trainer.max_steps=4", "trainer.save_every=1",
                                     "trainer.keep_checkpoints=0", "trainer.resume=true"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{shard}: truncated" in proc.stderr
    assert "resumed from " + str(run_copy / "checkpoints" / "step_000002") in proc.stderr
    assert read_steps(run_copy) == [1, 2, 3, 4]
    names = sorted(p.name for p in (run_copy / "checkpoints").iterdir())
    assert names == ["step_000001", "step_000002", "step_000003", "step_000003.damaged", "step_000004"]
    # max_steps went from 3 to 4: the LR schedule is re-stretched, and the warning gives the LR step 3 then used.
    rows = [json.loads(line) for line in (run_copy / "metrics.jsonl").read_text().splitlines()]
    assert "trainer.max_steps changed from 3 to 4 on resume" in proc.stderr
    assert f"({rows[2]['lr']:.3g} for the next update)" in proc.stderr


def test_resume_with_no_intact_checkpoint_names_each_damage(run_copy, warm_model):
    for step_dir in (run_copy / "checkpoints").iterdir():
        (step_dir / "trainer_state.json").write_text('{"step": 1, "sampl')
    proc = run_train(igrpo_train_cmd(warm_model, run_copy, "trainer.max_steps=4", "trainer.resume=true"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "no intact checkpoint" in proc.stderr
    for step in (1, 2, 3):
        assert f"step_00000{step}/trainer_state.json: not valid JSON" in proc.stderr


class RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def craft_metadata(policy_dir, marker):
    (policy_dir / ".metadata").write_bytes(pickle.dumps(RunsCode(marker)))


def craft_rng_state(policy_dir, marker):
    """A valid index whose RNG-state entry points at a pickle that runs code (appended to its shard)."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    with open(policy_dir / ".metadata", "rb") as f:
        md = pickle.load(f)  # our own, benign index
    key = next(k for k, v in md.state_dict_metadata.items()
               if isinstance(v, BytesStorageMetadata) and k.startswith("rng_state"))
    info = md.storage_data[next(i for i in md.storage_data if i.fqn == key)]
    buf = io.BytesIO()
    torch.save(RunsCode(marker), buf)
    shard = policy_dir / info.relative_path
    info.offset, info.length = shard.stat().st_size, len(buf.getvalue())
    with open(shard, "ab") as f:
        f.write(buf.getvalue())
    (policy_dir / ".metadata").write_bytes(pickle.dumps(md))


@pytest.mark.parametrize("craft", [craft_metadata, craft_rng_state])
def test_crafted_checkpoint_does_not_run_under_resume(run_copy, warm_model, tmp_path, craft):
    marker = tmp_path / "code_ran"
    craft(run_copy / "checkpoints" / "step_000003" / "policy", marker)
    proc = run_train(igrpo_train_cmd(warm_model, run_copy, "trainer.max_steps=4", "trainer.resume=true"))
    assert not marker.exists()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "refusing to load" in proc.stderr.strip().splitlines()[-1]


def test_crafted_checkpoint_does_not_run_under_convert(run_copy, warm_model, tmp_path):
    marker = tmp_path / "code_ran"
    craft_metadata(run_copy / "checkpoints" / "step_000003" / "policy", marker)
    cmd = [sys.executable, "-m", "nemo_igrpo.cli", "convert", "megatron-to-hf", "--megatron",
           str(run_copy / "checkpoints" / "step_000003"), "--hf-config", str(warm_model), "--out", str(tmp_path / "hf")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=train_env(), timeout=600)
    assert not marker.exists()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert ".metadata: refusing to load: it references posix.mkdir" in proc.stderr
    assert not (tmp_path / "hf").exists()
