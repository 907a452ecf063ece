"""Refit of a model whose output layer is its input embedding (SmolLM2's layout) on vLLM's CPU build.

No checkpoint tensor names the tied head, so vLLM's layerwise reload keeps the head's old state, and on CPU that
state includes a packed GEMM copy of the old embedding: before the fix, generation after a refit sampled from the old
output layer (log-probs off by 1.8 on this model; in the SmolLM2 runs the generator-vs-policy mismatch grew from
5e-6 to 5e-3 in six steps). Runs in a subprocess: one engine per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("vllm")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from vllm_common import build_model_dir  # noqa: E402

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tied_refit_worker.py")
ATOL = 1e-4  # float32 on both sides, as in test_vllm_generator.py


def test_refit_updates_the_tied_output_layer(tmp_path):
    model_dir = build_model_dir(str(tmp_path / "tied"), tied=True)
    out = tmp_path / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, WORKER, model_dir, str(out)], env=env, text=True, capture_output=True,
                          timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    result = json.loads(out.read_text())
    print(result)
    assert result["tied_in_vllm"]  # the engine really shares the tensor (the case under test)
    assert result["vs_new_weights"] < ATOL
    assert result["vs_old_weights"] > 100 * ATOL  # the refit changed the model
