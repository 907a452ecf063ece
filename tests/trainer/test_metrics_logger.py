"""What a resumed run's metrics look like: each step once in JSONL and TensorBoard, one W&B run across restarts, and a
corrupted line in the middle of metrics.jsonl reported by its line number instead of silently dropped."""

from __future__ import annotations

import json
import logging
import sys
import types

from nemo_igrpo.trainer.metrics_logger import MetricsLogger


def make_logger(out, initial_step=0, tensorboard=False, wandb=False):
    return MetricsLogger(out, enabled=True, tensorboard=tensorboard, wandb=wandb, wandb_project="p", run_name="r",
                         config={"a": 1}, progress_bar=False, total_steps=10, initial_step=initial_step,
                         truncate_after_step=initial_step)


def crash_after(out, steps, **kw):
    """A run that logged ``steps`` (value 1.0) and was killed (no checkpoint after the first ones)."""
    logger = make_logger(out, **kw)
    for s in steps:
        logger.log(s, {"reward/mean": 1.0})
    logger.close()


def test_tensorboard_shows_each_replayed_step_once(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    crash_after(tmp_path, [1, 2, 3, 4, 5], tensorboard=True)
    resumed = make_logger(tmp_path, initial_step=3, tensorboard=True)  # the checkpoint was at step 3
    for s in (4, 5, 6):
        resumed.log(s, {"reward/mean": 2.0})
    resumed.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    got = [(e.step, e.value) for e in acc.Scalars("reward/mean")]
    assert got == [(1, 1.0), (2, 1.0), (3, 1.0), (4, 2.0), (5, 2.0), (6, 2.0)]


def test_jsonl_has_each_step_once_also_when_resuming_without_a_checkpoint(tmp_path):
    crash_after(tmp_path, [0, 1, 2])  # step 0: the initial validation
    resumed = make_logger(tmp_path, initial_step=0)  # resume=true found no checkpoint: starts from scratch
    for s in (0, 1):
        resumed.log(s, {"reward/mean": 2.0})
    resumed.close()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["reward/mean"]) for r in rows] == [(0, 2.0), (1, 2.0)]


def test_corrupted_middle_line_is_reported_and_kept_aside(tmp_path, caplog):
    lines = [json.dumps({"step": s, "reward/mean": 1.0}) for s in (1, 2, 3, 4)]
    lines[1] = '{"step": 2, "reward/me\x00\x00'  # line 2 damaged on disk
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 5, "rew')  # and a torn last line
    with caplog.at_level(logging.INFO, logger="nemo_igrpo.trainer"):
        make_logger(tmp_path, initial_step=4).close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "metrics.jsonl:2: corrupted line" in warnings[0]
    assert any("metrics.jsonl:5: dropped a torn last line" in r.getMessage() for r in caplog.records)
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 3, 4]
    assert (tmp_path / "metrics.jsonl.corrupt").read_text() == "2\t" + lines[1] + "\n"


class RecordingWandb(types.ModuleType):
    """Stands in for the ``wandb`` package (not installed here, and it would need a network and an account): records
    what the logger asks of it. The property under test is the logger's, that every restart asks for the same run."""

    def __init__(self):
        super().__init__("wandb")
        self.inits = []

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return types.SimpleNamespace(log=lambda *a, **k: None, finish=lambda: None)


def test_wandb_keeps_one_run_id_across_restarts(tmp_path, monkeypatch):
    fake = RecordingWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    crash_after(tmp_path, [1, 2], wandb=True)
    crash_after(tmp_path, [3], wandb=True, initial_step=2)
    make_logger(tmp_path, initial_step=3, wandb=True).close()
    ids = [kw["id"] for kw in fake.inits]
    assert len(ids) == 3 and len(set(ids)) == 1 and ids[0]
    assert all(kw["resume"] == "allow" for kw in fake.inits)
    other = RecordingWandb()
    monkeypatch.setitem(sys.modules, "wandb", other)
    make_logger(tmp_path / "another_run", wandb=True).close()
    assert other.inits[0]["id"] != ids[0]
