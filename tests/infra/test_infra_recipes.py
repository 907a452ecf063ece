"""Every recipe in conf/ loads and validates; paper recipes carry the paper's values; each iGRPO recipe's GRPO twin
differs only in the refinement switch (and its name and output directory); the dry-run plan of each is right."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from nemo_igrpo.config import Config, ConfigError, load_config
from nemo_igrpo.trainer.plan import build_plan, describe_plan, parallel_layout, step_budget


def plan_text(cfg, world_size):
    """The plan without opening model, data or output (those are tested in test_infra_dry_run.py)."""
    return describe_plan(build_plan(cfg, world_size, inspect=False))

CONF = Path(__file__).resolve().parents[2] / "conf"
RECIPES = sorted(CONF.glob("*.yaml"))
PAPER = ["orn7b_acereason", "r1distill7b_math", "nemotronh8b_math"]
TWINS = sorted(p.name[: -len("_igrpo.yaml")] for p in CONF.glob("*_igrpo.yaml")
               if (CONF / p.name.replace("_igrpo.yaml", "_grpo.yaml")).is_file())


def _flat(obj, prefix=""):
    """{dotted.key: value} of a config dataclass tree."""
    out = {}
    for key, value in (dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj).items():
        if isinstance(value, dict) and key != "weights":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    # Recipes interpolate these; the tests check the defaults unless they set them.
    for var in ("MODEL_DIR", "DATA_DIR", "RESULTS_DIR"):
        monkeypatch.delenv(var, raising=False)


def test_conf_has_the_paper_recipes():
    names = {p.stem for p in RECIPES}
    for stem in PAPER:
        assert {f"{stem}_igrpo", f"{stem}_grpo"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads_and_validates(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    # Interpolations are resolved: nothing is left for the trainer to resolve later.
    assert "${" not in str(dataclasses.asdict(cfg))


@pytest.mark.parametrize("stem", TWINS)
def test_grpo_twin_differs_only_in_the_refinement_switch(stem):
    igrpo = _flat(load_config(CONF / f"{stem}_igrpo.yaml"))
    grpo = _flat(load_config(CONF / f"{stem}_grpo.yaml"))
    differing = {k for k in igrpo if igrpo[k] != grpo[k]}
    assert differing <= {"name", "trainer.output_dir", "algorithm.refinement.enabled"}, differing
    assert igrpo["algorithm.refinement.enabled"] is True and grpo["algorithm.refinement.enabled"] is False
    assert igrpo["trainer.output_dir"] != grpo["trainer.output_dir"]  # two runs must not share checkpoints
    # Matched budget: N + G of iGRPO = K of GRPO.
    assert igrpo["algorithm.group_size"] == grpo["algorithm.group_size"]


@pytest.mark.parametrize("stem", TWINS)
def test_grpo_twin_is_asked_what_igrpo_stage2_is_asked(stem):
    """The resolved prompts of the twins: GRPO's trained prompt q, iGRPO's Stage-1 prompt (= q) and Stage-2 prompt
    q' = Concat(q, d) built by the code the rollout worker runs. q' must hold q whole (system message and the user
    message with its instruction), so both recipes ask for the same answer format and are graded alike."""
    from nemo_igrpo.algorithms.igrpo import build_refinement_messages
    from nemo_igrpo.data.prompts import build_messages

    igrpo, grpo = load_config(CONF / f"{stem}_igrpo.yaml"), load_config(CONF / f"{stem}_grpo.yaml")
    problem, draft = "Find $x$ if $2x + 3 = 7$.", "We get $x = 2$, so \\boxed{2}."

    def single_shot(cfg):
        return build_messages(problem, cfg.data.system_prompt, cfg.data.instruction)

    q = single_shot(grpo)
    assert single_shot(igrpo) == q  # Stage 1 = GRPO's prompt
    q_prime = build_refinement_messages(single_shot(igrpo), [ord(c) for c in draft],
                                        lambda ids: "".join(map(chr, ids)), igrpo.algorithm.refinement)
    assert q_prime[:-1] == q[:-1]  # the same system message (or none)
    assert q_prime[-1]["role"] == "user"
    assert q[-1]["content"] in q_prime[-1]["content"] and draft in q_prime[-1]["content"]
    assert igrpo.reward == grpo.reward  # graded by the same reward, format included


@pytest.mark.parametrize("variant", ["igrpo", "grpo"])
def test_r1_distill_recipes_know_the_template_opens_think(variant):
    # The R1-Distill chat template ends the generation prompt with "<think>\n"; without the flag the format reward
    # would require a second <think> and score every response 0.
    assert load_config(CONF / f"r1distill7b_math_{variant}.yaml").reward.think_opened_in_prompt


@pytest.mark.parametrize("stem", PAPER)
@pytest.mark.parametrize("variant", ["igrpo", "grpo"])
def test_paper_values(stem, variant):
    cfg = load_config(CONF / f"{stem}_{variant}.yaml")
    o = cfg.policy.optimizer
    assert (o.lr, o.min_lr_ratio, o.warmup_ratio) == (1e-6, 0.1, 0.1)
    assert cfg.data.num_epochs == 1 and cfg.trainer.max_steps == 0
    assert cfg.data.max_prompt_tokens == 1024 and cfg.generation.max_new_tokens == 4096
    assert cfg.generation.temperature == 0.7 and cfg.generation.backend == "vllm"
    assert cfg.algorithm.kl_coef == 0.0 and cfg.algorithm.clip_eps == 0.2
    assert cfg.reward.weights == {"accuracy": 1.0, "format": 1.0}
    assert cfg.algorithm.group_size == 8 and cfg.algorithm.refinement.num_drafts == 4
    assert cfg.data.prompts_per_step * cfg.algorithm.group_size == 1024
    assert not cfg.policy.trust_remote_code


def test_model_and_data_paths_follow_the_environment(monkeypatch):
    monkeypatch.setenv("MODEL_DIR", "/lustre/models")
    monkeypatch.setenv("DATA_DIR", "/lustre/data")
    cfg = load_config(CONF / "orn7b_acereason_igrpo.yaml")
    assert cfg.policy.model_path == "/lustre/models/OpenReasoning-Nemotron-7B"
    assert cfg.data.train_file == "/lustre/data/acereason_math_train.jsonl"
    monkeypatch.delenv("MODEL_DIR")
    assert load_config(CONF / "orn7b_acereason_igrpo.yaml").policy.model_path == "/models/OpenReasoning-Nemotron-7B"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_describe_plan_on_two_nodes(path):
    cfg = load_config(path)
    tp, pp = cfg.policy.tensor_model_parallel_size, cfg.policy.pipeline_model_parallel_size
    plan = build_plan(cfg, 16, inspect=False)
    if 16 % (tp * pp):
        assert any("tensor_model_parallel_size" in str(p) for p in plan.problems)
        return
    if cfg.data.prompts_per_step % (16 // (tp * pp)):
        # A laptop recipe (a few prompts per step) cannot be shared over 16 ranks: the plan must say so at the key.
        assert [p.where for p in plan.problems] == ["data.prompts_per_step"]
        return
    assert not plan.problems
    text = describe_plan(plan)
    assert f"16 = TP {tp} x PP {pp} x DP {16 // (tp * pp)}" in text
    assert "completions per step" in text and "max generated tokens" in text


@pytest.mark.parametrize("stem", PAPER)
def test_paper_plan_budget(stem):
    igrpo = plan_text(load_config(CONF / f"{stem}_igrpo.yaml"), 16)
    grpo = plan_text(load_config(CONF / f"{stem}_grpo.yaml"), 16)
    for text in (igrpo, grpo):
        assert "16 = TP 2 x PP 1 x DP 8" in text
        assert "prompts per step          128   per DP rank: 16" in text
        assert "1,024 x 4,096 = 4,194,304   per DP rank: 524,288" in text
    assert "completions per step      1,024 = 512 drafts + 512 refinements   per DP rank: 128" in igrpo
    assert "K = 8 = N 4 drafts (Stage 1) + G 4 refinements (Stage 2)" in igrpo
    assert "completions per step      1,024   per DP rank: 128" in grpo
    assert "trained sequences         1,024" in grpo and "trained sequences         512" in igrpo
    assert "# warnings" not in igrpo


def test_budget_numbers():
    cfg = load_config(CONF / "r1distill7b_math_igrpo.yaml")
    b = step_budget(cfg)
    assert (b.prompts, b.group_size, b.drafts, b.refinements, b.completions, b.trained) == (128, 8, 4, 4, 1024, 512)
    assert b.max_generated_tokens == 1024 * 4096


def test_layout_error_names_the_keys():
    cfg = load_config(CONF / "orn7b_acereason_igrpo.yaml", ["policy.pipeline_model_parallel_size=4"])
    with pytest.raises(ConfigError) as err:
        parallel_layout(cfg, 12)
    msg = str(err.value)
    assert "policy.tensor_model_parallel_size (2)" in msg and "policy.pipeline_model_parallel_size (4)" in msg
    assert "12" in msg
    with pytest.raises(ConfigError):
        parallel_layout(cfg, 0)


def test_uneven_shares_are_flagged():
    cfg = load_config(CONF / "orn7b_acereason_igrpo.yaml", ["data.prompts_per_step=100"])
    plan = build_plan(cfg, 16, inspect=False)
    assert "12.50 (uneven: 100 does not divide by DP=8)" in describe_plan(plan)
    # the trainer refuses unequal shares, so the dry run reports it as a problem naming the key
    assert [p.where for p in plan.problems] == ["data.prompts_per_step"]


def test_plan_never_shows_secrets(monkeypatch):
    monkeypatch.setenv("JUDGE_API_KEY", "sk-live-123")
    cfg = load_config(CONF / "orn7b_acereason_igrpo.yaml", [
        "reward.judge.base_url=https://alice:hunter2@judge.example/v1?api_key=sk-live-456&x=1",
        "reward.judge.model=judge"])
    text = plan_text(cfg, 16)
    for secret in ("sk-live-123", "sk-live-456", "hunter2", "alice"):
        assert secret not in text
    assert "api_key_env: JUDGE_API_KEY" in text  # the variable's name is shown, so it can be checked
    assert "judge.example/v1" in text and "x=1" in text


def test_plan_is_pure_python():
    import subprocess
    import sys

    code = ("import sys; from nemo_igrpo.config import load_config; from nemo_igrpo.trainer.plan import describe_plan;"
            "from nemo_igrpo.trainer.plan import build_plan;"
            f"describe_plan(build_plan(load_config({str(CONF / 'orn7b_acereason_igrpo.yaml')!r}), 16));"
            # (torch itself may be loaded by the loss registry that validate() consults; megatron and vllm may not.)
            "bad = [m for m in ('megatron', 'megatron.core', 'vllm') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("stem", PAPER)
@pytest.mark.parametrize("variant", ["igrpo", "grpo"])
def test_paper_recipes_say_where_they_depart_from_the_paper(stem, variant):
    """A departure from the paper is marked at its key, not presented as the paper's value."""
    text = (CONF / f"{stem}_{variant}.yaml").read_text()
    lines = text.splitlines()

    def note_above(key: str) -> str:
        i = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{key}:"))
        block = []
        for line in reversed(lines[:i]):
            if not line.strip().startswith("#"):
                break
            block.append(line)
        return " ".join(block)

    assert "FIDELITY" in note_above("prompts_per_step") and "FIDELITY" in note_above("weight_decay")
    assert "(paper)" not in note_above("prompts_per_step")
    if stem.startswith("orn7b_acereason"):
        note = note_above("train_file")
        assert "9.4k" in note and "--limit 9400 --seed 0" in note
