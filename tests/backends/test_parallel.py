"""initialize_parallel: the TP x PP x DP layout each rank sees, the world-size check, SLURM env resolution."""

from __future__ import annotations

import json

from launch import launch
from parallel_worker import host_collectives, layout, not_divisible, slurm_env


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


def test_host_side_collectives_run_on_the_gpu_default_group(tmp_path):
    """On GPU the default group is NCCL; the trainer's metric/counter/flag collectives carry CPU tensors. Simulated on
    CPU: the default group gets exactly the device types the GPU path configures (gloo serving each, NCCL being
    absent here), and every collective must find a backend for its tensor's device in the group it uses."""
    from nemo_igrpo.backends.policy.parallel import process_group_backend

    gpu_backend = process_group_backend("nccl")
    assert gpu_backend == "cpu:gloo,cuda:nccl"
    assert process_group_backend(None) == "gloo"
    run = launch(host_collectives, (gpu_backend, str(tmp_path)), world_size=2, err_dir=str(tmp_path))
    assert run.ok, run.tail()
    got = [json.loads((tmp_path / f"collectives{r}.json").read_text()) for r in range(2)]
    for g in got:
        assert "error" not in g, g["error"]
        assert g["mean"] == {"a": 0.5, "b": 1.0} and g["sum"] == [2.0, 1.0] and g["any"] is True
        assert g["bcast"] == {"from": 0} and g["mp_bcast"] == {"from": g["mp_bcast"]["from"]}
        ops = {c["op"] for c in g["calls"]}
        assert ops == {"all_reduce", "broadcast_object_list", "barrier"}, ops
        bad = [c for c in g["calls"] if not c["carried"]]
        assert not bad, f"collectives on a group without a backend for their device: {bad}"


def test_an_nccl_only_default_group_cannot_carry_host_collectives(tmp_path):
    """The failure the GPU backend string prevents, reproduced: a default group with a CUDA backend only (what
    ``backend="nccl"`` configures) raises on the first host-side reduction; initialize_parallel refuses such a group
    (made before it by someone else) up front, naming the backend to use."""
    run = launch(host_collectives, ("nccl", str(tmp_path)), world_size=2, err_dir=str(tmp_path))
    assert run.ok, run.tail()
    got = json.loads((tmp_path / "collectives0.json").read_text())
    assert "No backend type associated with device type cpu" in got["raw_error"]
    assert "'cuda:gloo'" in got["error"] and "backend='cpu:gloo,cuda:nccl'" in got["error"]
