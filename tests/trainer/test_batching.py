from nemo_igrpo.trainer.batching import masked_mean, pack_sequences
from nemo_igrpo.seeding import derive_seed


def test_pack_aligns_response_tokens_and_logprobs():
    ids, mask, lp = pack_sequences([[1, 2], [3]], [[7, 8, 9], [4]], pad_id=0, generator_logprobs=[[-1., -2., -3.], [-4.]])
    assert ids.tolist() == [[1, 2, 7, 8, 9], [3, 4, 0, 0, 0]]
    assert mask.tolist() == [[0, 0, 1, 1, 1], [0, 1, 0, 0, 0]]
    assert lp.tolist() == [[0, 0, -1, -2, -3], [0, -4, 0, 0, 0]]
    assert masked_mean(lp, mask) == -10 / 4


def test_seeds_are_stable_and_distinct():
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3)
    seeds = {derive_seed(1, s, p, d) for s in range(20) for p in (1, 2, 3) for d in range(4)}
    assert len(seeds) == 20 * 3 * 4
    assert 0 <= derive_seed(7, 7, 7) < 2**63
