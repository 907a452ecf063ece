import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def warm_model(tmp_path_factory) -> Path:
    """A tiny Llama warm-started by the demo's SFT: it writes the answer format, so rewards (and advantages) are not
    all zero and a training step really changes the weights."""
    from nemo_igrpo.demo.sft import run_sft

    out = tmp_path_factory.mktemp("warm") / "sft"
    run_sft(out, steps=int(os.environ.get("IGRPO_TEST_SFT_STEPS", "150")), seed=0, eval_limit=0)
    return out
