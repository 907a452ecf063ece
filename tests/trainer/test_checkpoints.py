"""Checkpoint directories: only complete ones are found; retention; resume compatibility."""

import json
import os

import pytest

from nemo_igrpo.config import load_config, to_dict
from nemo_igrpo.trainer.checkpoints import CheckpointDirectory, ResumeError, check_resume_compatible


def test_partial_save_is_invisible(tmp_path):
    ckpts = CheckpointDirectory(tmp_path / "ckpt")
    assert ckpts.latest() is None
    d = ckpts.begin(5)
    (d / "shard").write_text("x")
    ckpts.commit(5, {"step": 5})
    # a save killed before commit: the partial dir exists but is never "latest"
    d = ckpts.begin(10)
    (d / "shard").write_text("half")
    assert ckpts.latest().name == "step_000005"
    assert json.loads((ckpts.latest() / "trainer_state.json").read_text()) == {"step": 5}
    # the next attempt at the same step starts clean
    d = ckpts.begin(10)
    assert list(d.iterdir()) == []
    ckpts.commit(10, {"step": 10})
    assert ckpts.complete_steps() == [5, 10]
    assert not any(p.name.endswith(".partial") for p in (tmp_path / "ckpt").iterdir())


def test_directory_without_state_is_not_complete(tmp_path):
    ckpts = CheckpointDirectory(tmp_path)
    os.makedirs(tmp_path / "step_000003")
    assert ckpts.latest() is None


def test_prune_keeps_newest(tmp_path):
    ckpts = CheckpointDirectory(tmp_path)
    for s in (1, 2, 3, 4):
        ckpts.begin(s)
        ckpts.commit(s, {"step": s})
    ckpts.prune(2)
    assert ckpts.complete_steps() == [3, 4]
    ckpts.prune(0)
    assert ckpts.complete_steps() == [3, 4]


def test_resume_refuses_other_config_unless_forced():
    saved = {"config": to_dict(load_config()), "model_fingerprint": {"hidden_size": 64}}
    same = to_dict(load_config(None, ["trainer.max_steps=99", "trainer.resume=true"]))
    check_resume_compatible(saved, same, {"hidden_size": 64}, force=False)
    other = to_dict(load_config(None, ["algorithm.clip_eps=0.3"]))
    with pytest.raises(ResumeError, match=r"algorithm.clip_eps.*0.2.*0.3"):
        check_resume_compatible(saved, other, {"hidden_size": 64}, force=False)
    with pytest.raises(ResumeError, match="hidden_size"):
        check_resume_compatible(saved, same, {"hidden_size": 128}, force=False)
    check_resume_compatible(saved, other, {"hidden_size": 128}, force=True)
