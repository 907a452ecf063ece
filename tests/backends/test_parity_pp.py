"""Pipeline parallel through megatron's forward-only schedule (PP=2, and TP2 x PP2 on 4 processes): log-probs,
entropy and logits equal the HF reference (== TP=1) within 1e-5; the export gathers every stage onto every rank."""

from parity_worker import run_and_check


def test_pp2_llama_and_tied_qwen2(tmp_path):
    run_and_check(["llama", "qwen2_tied"], tp=1, pp=2, tmp_path=tmp_path)


def test_tp2_pp2_llama(tmp_path):
    run_and_check(["llama"], tp=2, pp=2, tmp_path=tmp_path)
