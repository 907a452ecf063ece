"""Megatron loaded from HF == the HF reference at TP=1 and TP=2 (float32): logits, token log-probs and entropy
within 1e-5, the log-prob gradient w.r.t. each vocab shard, and the HF export bit-identical to the loaded weights."""

from parity_worker import run_and_check


def test_tp1_llama_and_tied_qwen2(tmp_path):
    run_and_check(["llama", "qwen2_tied"], tp=1, pp=1, tmp_path=tmp_path)


def test_tp2_untied_qwen2_and_llama(tmp_path):
    run_and_check(["qwen2_untied", "llama"], tp=2, pp=1, tmp_path=tmp_path)
