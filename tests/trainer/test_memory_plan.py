"""The --dry-run memory plan: its arithmetic against hand-computed values, published parameter counts, Hugging
Face's own parameter shapes, and the sizes a real MegatronPolicy allocates on a tiny model (TP=1 and TP=2)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "backends"))
sys.path.insert(0, str(HERE))

from launch import launch  # noqa: E402
from memory_worker import SHAPES, TINY, measure  # noqa: E402

from nemo_igrpo.config import load_config  # noqa: E402
from nemo_igrpo.trainer import memory_plan as mp  # noqa: E402

REPO = HERE.parents[1]


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    out = tmp_path_factory.mktemp("memory")
    for tp in (1, 2):
        run = launch(measure, (str(out), tp), world_size=tp, err_dir=str(out))
        assert run.ok, run.tail()
    return {tp: [json.loads((out / f"memory_tp{tp}_rank{r}.json").read_text()) for r in range(tp)] for tp in (1, 2)}


def test_parameter_counts_equal_the_published_totals():
    assert mp.shape_from_config(mp.BUILTIN_SHAPES["OpenReasoning-Nemotron-7B"]).total_params == 7_615_616_512
    assert mp.shape_from_config(mp.BUILTIN_SHAPES["Nemotron-H-8B-Base-8K"]).total_params == 8_100_852_736
    assert mp.shape_from_config(mp.BUILTIN_SHAPES["Qwen2.5-0.5B-Instruct"]).total_params == 494_032_768


@pytest.mark.parametrize("config", [
    dict(TINY),
    dict(TINY, model_type="llama", tie_word_embeddings=True),
    dict(model_type="nemotron_h", vocab_size=64, hidden_size=32, num_hidden_layers=5, hybrid_override_pattern="M-*M-",
         num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=48, mamba_num_heads=8,
         mamba_head_dim=8, ssm_state_size=8, n_groups=2, conv_kernel=4, tie_word_embeddings=False),
])
def test_tensor_list_matches_hugging_face(config):
    import torch
    import transformers

    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**config))
    hf = {n.replace("backbone.", "model."): p.numel() for n, p in model.named_parameters()}
    ours = {t.name: t.numel for t in mp.shape_from_config(config).tensors}
    if config.get("tie_word_embeddings"):
        hf.pop("lm_head.weight", None)
    assert ours == hf


def test_params_per_rank_by_hand():
    shape = mp.shape_from_config(TINY)
    h, f, v, hd = 64, 96, 128, 16
    attn = h * 4 * hd + 2 * h * 2 * hd + 4 * hd * h + (4 + 2 + 2) * hd  # q, k, v, o, biases
    layer = attn + 3 * h * f + 2 * h
    assert mp.params_per_rank(shape, 1, 1) == [2 * layer + 2 * v * h + h]
    layer_tp2 = (attn + 3 * h * f) // 2 + 2 * h
    assert mp.params_per_rank(shape, 2, 1) == [2 * layer_tp2 + 2 * v * h // 2 + h]
    # PP=2: the embedding on stage 0, final norm + output layer on stage 1.
    assert mp.params_per_rank(shape, 1, 2) == [layer + v * h, layer + v * h + h]


def test_sequence_budget_and_max_model_len():
    cfg = load_config(REPO / "conf" / "demo_igrpo.yaml")
    b = mp.sequence_budget(cfg)
    r = cfg.algorithm.refinement
    # Template without its placeholders, the truncation marker, the chat template allowance.
    overhead = len(r.template.replace("{prompt}", "").replace("{draft}", "").encode()) + len("...") + 64
    assert b.stage2_prompt == 256 + 96 + overhead and b.prompt == 256 and b.completion == 96
    assert b.longest_sequence == 256 + 96 + overhead + 96 == b.max_model_len
    assert mp.sequence_budget(load_config(REPO / "conf" / "demo_grpo.yaml")).max_model_len == 256 + 96
    fixed = load_config(REPO / "conf" / "demo_igrpo.yaml", ["generation.max_model_len=4096"])
    assert mp.sequence_budget(fixed).max_model_len == 4096


def test_stage2_bound_holds_for_real_stage2_prompts():
    """The budget bounds real Stage-2 prompts built by the rollout code from a prompt of the maximum length and a
    draft of the maximum length (demo tokenizer, character-level: the tightest case for a byte count)."""
    from nemo_igrpo.algorithms.igrpo import build_refinement_messages
    from nemo_igrpo.data.prompts import build_messages, encode_messages
    from nemo_igrpo.data.tokenizer import build_demo_tokenizer

    cfg = load_config(REPO / "conf" / "demo_igrpo.yaml")
    tok = build_demo_tokenizer()
    problem = "1 + 2 * 3 - 4 " * 40
    messages = build_messages(problem, cfg.data.system_prompt, cfg.data.instruction)
    prompt_tokens = len(encode_messages(tok, messages))
    draft = tok.encode("7 " * 200, add_special_tokens=False)
    stage2 = encode_messages(tok, build_refinement_messages(messages, draft, tok.decode, cfg.algorithm.refinement))
    bound = (prompt_tokens + cfg.algorithm.refinement.max_draft_tokens + mp.stage2_overhead_tokens(cfg))
    assert len(stage2) <= bound, (len(stage2), bound)


def test_phases_add_up_and_offload_leaves_the_generate_phase():
    cfg = load_config(REPO / "conf" / "orn7b_acereason_igrpo.yaml")
    shape = mp.shape_from_config(mp.BUILTIN_SHAPES["OpenReasoning-Nemotron-7B"])
    plan = mp.build_memory_plan(cfg, shape, tp=2, pp=1, dp=8, gpu_bytes=80 * mp.GIB)
    replicated = 2 * 28 * 3584 + 3584  # the norms over the hidden size
    assert plan.params == (7_615_616_512 - replicated) // 2 + replicated
    assert plan.weights == 2 * plan.params and plan.gradients == 4 * plan.params
    assert plan.optimizer == 12 * plan.params // 8
    assert plan.vllm_total == int(0.4 * 80 * mp.GIB)
    gen = plan.phases()["generate"][1]
    assert gen == plan.weights + plan.gradients + plan.optimizer + plan.vllm_total
    off = mp.build_memory_plan(load_config(REPO / "conf" / "orn7b_acereason_igrpo.yaml",
                                           ["policy.offload_optimizer_during_generation=true"]),
                               shape, tp=2, pp=1, dp=8, gpu_bytes=80 * mp.GIB)
    assert off.phases()["generate"][1] == gen - plan.optimizer
    assert off.phases()["train"][1] == plan.phases()["train"][1]
    # KV: 2 (k, v) x 28 layers x 2 KV heads per rank x 128 x 2 bytes.
    assert plan.kv_bytes_per_token == 2 * 28 * 2 * 128 * 2


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "conf").glob("*.yaml")))
def test_dry_run_prints_a_memory_plan_for_every_recipe(name):
    from nemo_igrpo.trainer.plan import build_plan, describe_plan, recipe_layout

    path = REPO / "conf" / f"{name}.yaml"
    cfg = load_config(path)
    nodes, gpus = recipe_layout(path) or (1, 1)
    text = describe_plan(build_plan(cfg, nodes * gpus, inspect=False))
    section = text[text.index("# memory plan per GPU"):]
    for item in ("policy weights", "gradients", "optimizer state", "activations (train)", "peak:"):
        assert item in section, (item, section)
    if cfg.generation.backend == "vllm":
        assert "vLLM KV cache" in section and "generate " in section


def test_weights_gradients_optimizer_match_a_real_policy(measured):
    shape = mp.shape_from_config(TINY)
    for tp in (1, 2):
        params = mp.params_per_rank(shape, tp, 1)[0]
        for rank in measured[tp]:
            assert rank["params"] == params
            assert rank["weights"] == 4 * params
            # Megatron pads its gradient buffer to a bucket alignment: at most a few KB here.
            assert 4 * params <= rank["gradients"] <= 4 * params + 4 * 128 * 8
            assert rank["optimizer_before_step"] == 0
            assert rank["optimizer"] == mp.optimizer_bytes_per_param(4) * params


def test_saved_activations_match_a_real_policy(measured):
    shape = mp.shape_from_config(TINY)
    for tp in (1, 2):
        for rank in measured[tp]:
            for rows, width in SHAPES:
                key = f"{rows}x{width}"
                want = mp.saved_activation_bytes(shape, rows, width, tp=tp, param_bytes=4)
                assert rank["activations"][key] == want, (tp, key)
                want_r = mp.saved_activation_bytes(shape, rows, width, tp=tp, param_bytes=4, recompute=True)
                assert rank["activations_recompute"][key] == want_r, (tp, key)


def test_kl_reference_copy_is_on_the_gpu_in_every_phase_unless_offloaded():
    """With algorithm.kl_coef > 0 the policy keeps a copy of its initial weights (backends/policy/reference.py) on
    the device for the whole run, beside the training state in every phase; policy.reference_offload moves it to
    host memory."""
    from nemo_igrpo.trainer.plan import build_plan, describe_plan

    shape = mp.shape_from_config(mp.BUILTIN_SHAPES["OpenReasoning-Nemotron-7B"])
    recipe = REPO / "conf" / "orn7b_acereason_igrpo.yaml"

    def phases(*overrides):
        plan = mp.build_memory_plan(load_config(recipe, list(overrides)), shape, tp=2, pp=1, dp=8,
                                    gpu_bytes=80 * mp.GIB)
        return plan, {name: total for name, (_, total) in plan.phases().items()}

    plan, off = phases()
    _, kl = phases("algorithm.kl_coef=0.05")
    _, kl_offloaded = phases("algorithm.kl_coef=0.05", "policy.reference_offload=true")
    copy = 2 * plan.params  # this rank's shard of the weights, bf16
    assert kl == {name: total + copy for name, total in off.items()}
    assert kl_offloaded == off
    text = describe_plan(build_plan(load_config(recipe, ["algorithm.kl_coef=0.05"]), 16, inspect=False))
    assert "KL reference" in text.split("# memory plan per GPU")[1]


def test_hybrid_activation_recompute_leaves_the_mamba_layers_whole():
    """megatron-core 0.16.1's hybrid stack recomputes only attention cores and MLPs (backends/policy/model.py), so
    with policy.activation_checkpointing the Mamba layers keep their activations: a model of Mamba layers only saves
    exactly as much with recompute as without, and the Nemotron-H recipe's plan keeps its 24 Mamba layers whole."""
    mamba_only = {**mp.BUILTIN_SHAPES["Nemotron-H-8B-Base-8K"], "hybrid_override_pattern": "MMMM",
                  "num_hidden_layers": 4}
    shape = mp.shape_from_config(mamba_only)
    kw = dict(tp=2, param_bytes=2, flash=True)
    assert mp.training_activation_bytes(shape, 1, 4096, recompute=True, **kw) == \
        mp.training_activation_bytes(shape, 1, 4096, recompute=False, **kw)

    recipe = REPO / "conf" / "nemotronh8b_math_igrpo.yaml"
    cfg = load_config(recipe)
    assert cfg.policy.activation_checkpointing
    shape = mp.shape_from_config(mp.BUILTIN_SHAPES["Nemotron-H-8B-Base-8K"])
    width = mp.sequence_budget(cfg).longest_sequence
    plan = mp.build_memory_plan(cfg, shape, tp=2, pp=1, dp=8, gpu_bytes=80 * mp.GIB)
    everything = mp.training_activation_bytes(shape, 1, width, recompute=False, **kw)
    one_layer = (everything - mp.training_activation_bytes(
        mp.shape_from_config({**mp.BUILTIN_SHAPES["Nemotron-H-8B-Base-8K"], "hybrid_override_pattern": PATTERN_51,
                              "num_hidden_layers": 51}), 1, width, recompute=False, **kw))
    assert plan.activations > 24 * one_layer  # at least what the 24 Mamba layers save
    assert plan.activations < everything  # the attention and MLP layers are recomputed
    from nemo_igrpo.trainer.plan import build_plan, describe_plan

    text = describe_plan(build_plan(cfg, 16, inspect=False))
    assert "full recompute" not in text and "the 24 Mamba layers of the stage keep their activations" in text


# Nemotron-H-8B's pattern without its last layer (an MLP layer): one layer less, for the size of one layer.
PATTERN_51 = mp.BUILTIN_SHAPES["Nemotron-H-8B-Base-8K"]["hybrid_override_pattern"][:-1]
