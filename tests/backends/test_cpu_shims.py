"""Each CPU shim is necessary: with all shims the megatron operations work; with one shim left out, the
operation named in that shim's docstring fails (with a CUDA error, or for the Mamba kernels a missing triton).
Every case runs in fresh processes."""

from __future__ import annotations

import json

import pytest
import torch

from launch import launch
from shim_worker import main

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the shims are only applied without CUDA")

# shim left out -> (operation run, pipeline size, the megatron function seen failing in the traceback, what the
# error says)
NEEDED_BY = {
    "rng_tracker": ("seed", 1, "random.py:model_parallel_cuda_manual_seed", "cuda"),
    "current_device": ("forward", 1, "rotary_pos_embedding.py:get_emb", "cuda"),
    "cuda_factories": ("forward", 1, "utils.py:get_default_causal_mask", "cuda"),
    "synchronize": ("pp_forward", 2, "p2p_communication.py:_communicate", "cuda"),
    # Without it megatron's Mamba mixer cannot even be imported (it needs triton, then mamba-ssm's kernels).
    "mamba_kernels": ("mamba_forward", 1, "mamba_mixer.py:<module>", "triton"),
}


def _results(skip: str, op: str, pp: int, tmp_path) -> list[dict]:
    run = launch(main, (skip, op, pp, str(tmp_path)), world_size=pp, err_dir=str(tmp_path), timeout=120)
    assert run.ok, run.tail()
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(pp)]


@pytest.mark.parametrize("op,pp", [("forward", 1), ("recompute", 1), ("pp_forward", 2), ("mamba_forward", 1)])
def test_all_shims_work(op, pp, tmp_path):
    for res in _results("", op, pp, tmp_path):
        assert res["ok"], res


@pytest.mark.parametrize("skip", sorted(NEEDED_BY))
def test_each_shim_is_needed(skip, tmp_path):
    op, pp, where, error = NEEDED_BY[skip]
    results = _results(skip, op, pp, tmp_path)
    failed = [r for r in results if not r["ok"]]
    assert failed, f"{op} worked without the {skip!r} shim: it is not needed"
    for r in failed:
        assert error in r["error"].lower() and where in r["where"], r


def test_apply_is_idempotent_and_removable():
    code = (
        "import torch\n"
        "from nemo_igrpo.backends import cpu_shims as s\n"
        "orig = torch.cuda.current_device\n"
        "assert s.apply_cpu_shims() and s.apply_cpu_shims()\n"
        "assert torch.cuda.current_device() == torch.device('cpu')\n"
        "assert torch.zeros(2, device='cuda').device.type == 'cpu'\n"
        "s.remove_cpu_shims()\n"
        "assert torch.cuda.current_device is orig and not s.cpu_shims_active()\n"
        "try:\n    torch.zeros(2, device='cuda')\nexcept (RuntimeError, AssertionError):\n    pass\n"
        "else:\n    raise SystemExit('cuda factory still rewritten after remove')\n"
    )
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
