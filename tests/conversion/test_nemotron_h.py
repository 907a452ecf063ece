"""Nemotron-H mapping: exact HF <-> Megatron round trips, and agreement with megatron-core's real MambaModel."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(__file__))
import tiny_models  # noqa: E402

from nemo_igrpo.backends.conversion import get_mapping, nemotron_h  # noqa: E402
from nemo_igrpo.backends.conversion.cli import SHARDED_METADATA, hf_to_megatron  # noqa: E402


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return tiny_models.nemotron_h(tmp_path_factory.mktemp("nh") / "hf")


def _hf(hf_dir):
    import transformers

    return transformers.AutoConfig.from_pretrained(str(hf_dir)), load_file(str(hf_dir / "model.safetensors"))


def test_registry_and_pattern(hf_dir):
    cfg, _ = _hf(hf_dir)
    assert get_mapping("nemotron_h") is nemotron_h
    assert nemotron_h.layer_pattern(cfg) == "M*-M-"


@pytest.mark.parametrize("te", [True, False])
def test_mapping_round_trip_bit_identical(hf_dir, te):
    cfg, sd = _hf(hf_dir)
    mg = nemotron_h.hf_to_megatron(sd, cfg, transformer_engine=te)
    back = nemotron_h.megatron_to_hf(mg, cfg)
    assert sorted(back) == sorted(sd)
    for k in sd:
        assert back[k].dtype == sd[k].dtype and torch.equal(back[k], sd[k]), k
    # The checkpoint-key split is lossless too.
    merged = nemotron_h.from_checkpoint_tensors(nemotron_h.to_checkpoint_tensors(mg, cfg), cfg)
    te_names = mg if te else nemotron_h.hf_to_megatron(sd, cfg, transformer_engine=True)
    assert sorted(merged) == sorted(te_names)
    assert all(torch.equal(merged[k], te_names[k]) for k in merged)


def test_in_memory_prefix_accepted(hf_dir):
    # transformers 5 modules name the base model "model." (files: "backbone.").
    cfg, sd = _hf(hf_dir)
    renamed = {("model." + k[len("backbone."):] if k.startswith("backbone.") else k): v for k, v in sd.items()}
    mg = nemotron_h.hf_to_megatron(renamed, cfg)
    assert sorted(nemotron_h.megatron_to_hf(mg, cfg, hf_prefix="model.")) == sorted(renamed)


def test_unsupported_variants_rejected(hf_dir):
    cfg, sd = _hf(hf_dir)
    moe = tiny_models.nemotron_h_config("M*E")
    with pytest.raises(ValueError, match="MoE"):
        nemotron_h.check_supported(moe)
    with pytest.raises(ValueError, match="not divisible"):
        nemotron_h.validate_parallel(cfg, 3, 1)
    with pytest.raises(ValueError, match="not mapped"):
        nemotron_h.hf_to_megatron({**sd, "backbone.layers.0.mixer.extra": torch.zeros(1)}, cfg)


# ------------------------------------------------------------------------- against megatron-core's real MambaModel
@pytest.fixture
def parallel():
    from nemo_igrpo.backends.policy.parallel import destroy_parallel, initialize_parallel

    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(var, None)
    initialize_parallel(1, 1, 0)
    yield
    destroy_parallel()


def _cpu_model(cfg):
    """The trainer's own hybrid model: megatron-core's MambaModel, local spec, pure-PyTorch Mamba kernels."""
    from nemo_igrpo.backends.policy.model import build_model

    return build_model(cfg, torch.float32)[0]


def test_names_and_shapes_match_megatron_mamba_model(hf_dir, parallel):
    """megatron-core's MambaModel, built on CPU by the trainer's builder (local spec): its parameter names/shapes
    equal our local-name mapping, and its checkpoint keys/global shapes equal what we write."""
    from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor
    from megatron.core.dist_checkpointing.mapping import apply_factories
    from megatron.core.dist_checkpointing.dict_utils import nested_values

    cfg, sd = _hf(hf_dir)
    model = _cpu_model(cfg)
    params = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    ours = {k: tuple(v.shape) for k, v in nemotron_h.hf_to_megatron(sd, cfg, transformer_engine=False).items()}
    assert ours == params

    sharded = model.sharded_state_dict(metadata=dict(SHARDED_METADATA))
    apply_factories(sharded)
    tensors = {v.key: tuple(v.global_shape) for v in nested_values(sharded) if isinstance(v, ShardedTensor)}
    objects = {v.key for v in nested_values(sharded) if isinstance(v, ShardedObject)}
    written = nemotron_h.to_checkpoint_tensors(nemotron_h.hf_to_megatron(sd, cfg, transformer_engine=True), cfg)
    assert {k: tuple(v.shape) for k, v in written.items()} == tensors
    assert objects <= set(nemotron_h.extra_state_keys(cfg))


def test_megatron_mamba_model_loads_converted_checkpoint(hf_dir, tmp_path):
    """The dist checkpoint written without a model loads into the real MambaModel with every tensor in place."""
    from megatron.core import dist_checkpointing

    from nemo_igrpo.backends.policy.parallel import destroy_parallel, initialize_parallel

    out = hf_to_megatron(str(hf_dir), str(tmp_path / "mg"))
    cfg, sd = _hf(hf_dir)
    initialize_parallel(1, 1, 0)
    try:
        model = _cpu_model(cfg)
        state = dist_checkpointing.load({"model": model.sharded_state_dict(metadata=dict(SHARDED_METADATA))},
                                        str(out))
        model.load_state_dict(state["model"], strict=True)
    finally:
        destroy_parallel()
    expected = nemotron_h.hf_to_megatron(sd, cfg, transformer_engine=False)
    got = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    assert sorted(got) == sorted(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_cli_round_trip_bit_identical(hf_dir, tmp_path):
    from nemo_igrpo.cli import main

    assert main(["convert", "hf-to-megatron", "--hf", str(hf_dir), "--out", str(tmp_path / "mg"), "--tp", "2"]) == 0
    assert main(["convert", "megatron-to-hf", "--megatron", str(tmp_path / "mg"), "--hf-config", str(hf_dir),
                 "--out", str(tmp_path / "hf")]) == 0
    a, b = load_file(str(hf_dir / "model.safetensors")), load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert (hf_dir / "config.json").read_bytes() == (tmp_path / "hf" / "config.json").read_bytes()


def test_dtype_cast_keeps_a_log_and_d_in_float32(hf_dir, tmp_path):
    from nemo_igrpo.cli import main

    assert main(["convert", "hf-to-megatron", "--hf", str(hf_dir), "--out", str(tmp_path / "mg")]) == 0
    assert main(["convert", "megatron-to-hf", "--megatron", str(tmp_path / "mg"), "--hf-config", str(hf_dir),
                 "--out", str(tmp_path / "hf"), "--dtype", "bf16"]) == 0
    src, out = load_file(str(hf_dir / "model.safetensors")), load_file(str(tmp_path / "hf" / "model.safetensors"))
    for name, t in out.items():
        if name.endswith(("mixer.A_log", "mixer.D")):
            assert t.dtype == torch.float32 and torch.equal(t, src[name]), name
        else:
            assert t.dtype == torch.bfloat16, name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA, mamba-ssm, causal-conv1d and TE")
def test_logits_match_hf_on_gpu(hf_dir, tmp_path):
    """megatron MambaModel (TE spec, real kernels) loaded from our checkpoint gives HF's logits."""
    import transformers
    from megatron.core import dist_checkpointing

    from nemo_igrpo.backends.policy.parallel import destroy_parallel, initialize_parallel

    out = hf_to_megatron(str(hf_dir), str(tmp_path / "mg"))
    cfg = transformers.AutoConfig.from_pretrained(str(hf_dir))
    ids = torch.randint(0, cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0)).cuda()
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).cuda().eval()
    with torch.no_grad():
        ref = hf(ids).logits.float()
    initialize_parallel(1, 1, 0)
    try:
        from nemo_igrpo.backends.policy.model import build_model

        model = build_model(cfg, torch.float32)[0].eval()
        state = dist_checkpointing.load({"model": model.sharded_state_dict(metadata=dict(SHARDED_METADATA))},
                                        str(out))
        model.load_state_dict(state["model"], strict=False)
        with torch.no_grad():
            logits = model(ids, None, None).float()
    finally:
        destroy_parallel()
    torch.testing.assert_close(logits, ref, atol=2e-3, rtol=2e-3)
