"""One trainer-like process (run as a script, in the vLLM venv): policy-side process groups first
(``initialize_parallel``), then the colocated engine with vLLM's external launcher, a generation, and the trainer's
shutdown order. Rank and world come from the environment when a launcher set them, else this is a lone process.

    python launcher_worker.py MODEL_DIR OUT_JSON
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def main(model_dir: str, out_path: str) -> None:
    import torch.distributed as dist
    from megatron.core import parallel_state

    from nemo_igrpo.backends.generation.interface import SamplingParams
    from nemo_igrpo.backends.generation.vllm_generator import LAUNCHER_VARIABLES, VLLMGenerator
    from nemo_igrpo.backends.policy.parallel import destroy_parallel, initialize_parallel

    result: dict = {"env_before": {k: os.environ.get(k) for k in LAUNCHER_VARIABLES}}
    layout = initialize_parallel(1, 1, seed=0)
    gen = VLLMGenerator.from_pretrained(model_dir, max_model_len=64)
    config = gen.llm.llm_engine.vllm_config
    result["executor"] = config.parallel_config.distributed_executor_backend
    result["env_after"] = {k: os.environ.get(k) for k in LAUNCHER_VARIABLES}
    child = subprocess.run([sys.executable, "-c", "import os, json; print(json.dumps("
                            "{k: os.environ.get(k) for k in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_PORT')}))"],
                           capture_output=True, text=True, check=True)
    result["child_env"] = json.loads(child.stdout)
    out = gen.generate([[1, 2, 3, 4]], SamplingParams(temperature=0.0, max_new_tokens=5))
    result["tokens"] = out.token_ids[0]
    try:
        gen.generate([[1] * 60], SamplingParams(temperature=0.0, max_new_tokens=5))
    except ValueError as err:
        result["too_long"] = str(err)
    order: list[str] = []
    close, destroy_mp = gen.close, parallel_state.destroy_model_parallel

    def recorded_close():
        order.append(f"close(dist initialised={dist.is_initialized()})")
        close()
        order.append(f"closed(dist initialised={dist.is_initialized()})")

    def recorded_destroy_mp():
        order.append("destroy_model_parallel")
        destroy_mp()

    parallel_state.destroy_model_parallel = recorded_destroy_mp
    destroy_parallel(shutdown=[recorded_close])
    result["order"] = order
    result["rank"] = layout.rank
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
