"""Test helper: instantiate megatron-core's real ``MambaModel`` on CPU, to read its parameter names/shapes and its
``sharded_state_dict`` keys (the on-disk checkpoint layout). Forward cannot run (no kernels); construction can, with:

- a stub ``triton`` module (megatron's mamba mixer imports triton helpers at module import time),
- ``HAVE_MAMBA_SSM``/``HAVE_EINOPS`` forced on (only the constructors' guards read them; no kernel is called),
- a plain-torch stand-in for mamba-ssm's gated RMSNorm (same parameter, same TP sharding of ``weight``),
- megatron's torch RMSNorm for ``MambaStack.final_norm`` (hard-coded to TE's ``TENorm`` there; same ``weight``),
- a local (non-TE) spec mirroring megatron's TE ``mamba_stack_spec`` structure, with the same
  ``sharded_state_dict_keys_map`` trick megatron's local GPT spec uses, so checkpoint keys are the TE ones.
"""

from __future__ import annotations

import sys
from unittest import mock

import torch


def _stub_triton() -> None:
    if "triton" in sys.modules:
        return
    triton = mock.MagicMock(name="triton")
    sys.modules["triton"] = triton
    sys.modules["triton.language"] = triton.language


class _GatedNormStub(torch.nn.Module):
    """Stands in for mamba-ssm's RMSNormGated: one ``weight`` of size d_inner/tp, sharded on axis 0."""

    def __init__(self, hidden_size, eps=1e-5, group_size=None, norm_before_gate=False, device=None, dtype=None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, device="cpu", dtype=dtype))

    def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
        from megatron.core import parallel_state
        from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint

        return make_sharded_tensors_for_checkpoint(
            self.state_dict(prefix="", keep_vars=True), prefix, {"weight": 0}, sharded_offsets,
            tp_group=parallel_state.get_tensor_model_parallel_group(), dp_cp_group=metadata["dp_cp_group"])


def local_mamba_stack_spec():
    from megatron.core.ssm.mamba_block import MambaStack, MambaStackSubmodules
    from megatron.core.ssm.mamba_layer import MambaLayer, MambaLayerSubmodules
    from megatron.core.ssm.mamba_mixer import MambaMixer, MambaMixerSubmodules
    from megatron.core.ssm.mlp_layer import MLPLayer
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.mlp import MLP, MLPSubmodules
    from megatron.core.transformer.spec_utils import ModuleSpec
    from megatron.core.transformer.torch_norm import WrappedTorchNorm
    from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

    return ModuleSpec(module=MambaStack, submodules=MambaStackSubmodules(
        mamba_layer=ModuleSpec(module=MambaLayer, submodules=MambaLayerSubmodules(
            norm=WrappedTorchNorm,
            mixer=ModuleSpec(module=MambaMixer, submodules=MambaMixerSubmodules(
                in_proj=ColumnParallelLinear, out_proj=RowParallelLinear)),
            sharded_state_dict_keys_map={"norm.": "mixer.in_proj.layer_norm_"})),
        attention_layer=ModuleSpec(module=TransformerLayer, submodules=TransformerLayerSubmodules(
            input_layernorm=WrappedTorchNorm,
            self_attention=ModuleSpec(module=SelfAttention, params={"attn_mask_type": AttnMaskType.causal},
                                      submodules=SelfAttentionSubmodules(
                                          linear_qkv=ColumnParallelLinear, core_attention=DotProductAttention,
                                          linear_proj=RowParallelLinear)),
            sharded_state_dict_keys_map={"input_layernorm.": "self_attention.linear_qkv.layer_norm_"})),
        mlp_layer=ModuleSpec(module=MLPLayer, submodules=TransformerLayerSubmodules(
            pre_mlp_layernorm=WrappedTorchNorm,
            mlp=ModuleSpec(module=MLP, submodules=MLPSubmodules(
                linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear)),
            sharded_state_dict_keys_map={"pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_"})),
    ))


def build_cpu_mamba_model(hf_config, dtype=torch.float32):
    """The real megatron ``MambaModel`` (local spec) on CPU; parallel state must be initialised (TP=PP=1)."""
    _stub_triton()
    from megatron.core.models.mamba import MambaModel
    from megatron.core.ssm import mamba_block, mamba_context_parallel, mamba_mixer
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    from nemo_igrpo.backends.conversion.nemotron_h import mamba_config_from_hf

    config, kwargs = mamba_config_from_hf(hf_config, dtype, use_cpu_initialization=True)
    with mock.patch.object(mamba_mixer, "HAVE_MAMBA_SSM", True), \
            mock.patch.object(mamba_mixer, "HAVE_EINOPS", True), \
            mock.patch.object(mamba_context_parallel, "HAVE_EINOPS", True), \
            mock.patch.object(mamba_mixer, "ExtendedRMSNorm", _GatedNormStub), \
            mock.patch.object(mamba_block, "TENorm", WrappedTorchNorm):
        return MambaModel(config=config, mamba_stack_spec=local_mamba_stack_spec(), pre_process=True,
                          post_process=True, parallel_output=True, **kwargs)
