"""iGRPO (arXiv 2602.09000) on megatron-core: iterative self-refinement GRPO for verifiable math reasoning."""

__version__ = "0.1.0"
