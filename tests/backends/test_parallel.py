"""initialize_parallel: the TP x PP x DP layout each rank sees, the world-size check, SLURM env resolution."""

from __future__ import annotations

import json

from launch import launch
from parallel_worker import layout, not_divisible, slurm_env


def test_layout_tp2_dp2(tmp_path):
    run = launch(layout, (2, 1, str(tmp_path)), world_size=4, err_dir=str(tmp_path))
    assert run.ok, run.tail()
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(4)]
    # megatron order tp-cp-ep-dp-pp: consecutive ranks share a TP group
    assert [(g["tp_rank"], g["dp_rank"]) for g in got] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert all(g["dp_size"] == 2 and g["tp_size"] == 2 and g["is_last_stage"] and g["device"] == "cpu" for g in got)
    assert [g["is_mp_src"] for g in got] == [True, False, True, False]


def test_world_size_not_divisible_is_a_clear_error(tmp_path):
    run = launch(not_divisible, (str(tmp_path),), world_size=1, err_dir=str(tmp_path))
    assert run.ok, run.tail()
    msg = (tmp_path / "error.txt").read_text()
    assert "world_size=1 is not divisible" in msg and "2 * 1" in msg, msg


def test_slurm_env(tmp_path):
    run = launch(slurm_env, (str(tmp_path),), world_size=1, err_dir=str(tmp_path))
    assert run.ok, run.tail()
    got = json.loads((tmp_path / "slurm.json").read_text())
    assert got["got"] == [5, 8, 1] and got["rank"] == "5" and got["port"] == str(20000 + 12345 % 20000)
