import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def warm_model(tmp_path_factory) -> Path:
    """A tiny Llama warm-started by the demo's SFT: it writes the answer format, so rewards (and advantages) are not
    all zero and a training step really changes the weights. As in the demo, the warm start also sees the iGRPO
    recipe's Stage-2 prompts: a model that never saw one answers them out of distribution (measured: every
    refinement of a 4-step run scored 0, so no step had a gradient)."""
    from nemo_igrpo.config import load_config
    from nemo_igrpo.demo.sft import run_sft

    recipe = load_config(Path(__file__).resolve().parents[2] / "conf" / "demo_igrpo.yaml")
    out = tmp_path_factory.mktemp("warm") / "sft"
    # 300 steps: on the demo's task (values <= 30, half the answers direct) 150 left greedy accuracy at 10% and every
    # rollout of a 2-prompt step scored alike (no gradient); 300 give 16% and rewards that differ within groups.
    run_sft(out, steps=int(os.environ.get("IGRPO_TEST_SFT_STEPS", "300")), seed=0, eval_limit=0,
            data_config=recipe.data, refinement=recipe.algorithm.refinement)
    return out
