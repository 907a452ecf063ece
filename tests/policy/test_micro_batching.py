"""Token-budget micro-batches and sequence packing (backends/policy/micro_batches.py): the plans themselves, and a
real MegatronPolicy giving the same log-probs, entropies and step gradient under every layout as under the padded
reference (TP=1, and PP=2 where micro-batches of different shapes cross pipeline stages)."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "backends"))
sys.path.insert(0, HERE)

from launch import launch  # noqa: E402
from layout_worker import WIDTH, make_batch, run  # noqa: E402

from nemo_igrpo.backends.policy.micro_batches import padding_fraction, plan_micro_batches  # noqa: E402

LENGTHS = [40, 5, 23, 9, 31, 14, 6, 38, 11, 27, 17]


def _check_cover(plan, lengths):
    seen = sorted(s.index for mb in plan for s in mb.segments)
    assert seen == list(range(len(lengths)))
    for mb in plan:
        for s in mb.segments:
            assert s.length == lengths[s.index] and 0 <= s.row < mb.rows and s.offset + s.length <= mb.width
        # Segments of a row never overlap.
        for r in range(mb.rows):
            spans = sorted((s.offset, s.offset + s.length) for s in mb.segments if s.row == r)
            assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


def test_padded_plan_is_the_old_layout():
    plan = plan_micro_batches(LENGTHS, "padded", rows_per_micro_batch=4, token_budget=0, row_capacity=40, width=40)
    assert [mb.rows for mb in plan] == [4, 4, 3] and all(mb.width == 40 for mb in plan)
    assert [s.index for mb in plan for s in mb.segments] == list(range(11))
    assert padding_fraction(plan) == pytest.approx(1 - sum(LENGTHS) / (11 * 40))


def test_bucketed_plan_respects_the_budget_and_cuts_padding():
    plan = plan_micro_batches(LENGTHS, "bucketed", rows_per_micro_batch=4, token_budget=80, row_capacity=40)
    _check_cover(plan, LENGTHS)
    assert all(mb.rows * mb.width <= 80 or mb.rows == 1 for mb in plan)
    # Longest first: [40, 38] [31, 27] [23, 17, 14] [11, 9, 6, 5].
    assert [[s.length for s in mb.segments] for mb in plan] == [[40, 38], [31, 27], [23, 17, 14], [11, 9, 6, 5]]
    assert padding_fraction(plan) == pytest.approx(1 - 221 / (80 + 62 + 69 + 44))


def test_packed_plan_fills_rows_first_fit_decreasing():
    plan = plan_micro_batches(LENGTHS, "packed", rows_per_micro_batch=4, token_budget=80, row_capacity=40)
    _check_cover(plan, LENGTHS)
    rows = [[s.length for s in mb.segments if s.row == r] for mb in plan for r in range(mb.rows)]
    assert rows == [[40], [38], [31, 9], [27, 11], [23, 17], [14, 6, 5]]
    assert all(mb.rows * mb.width <= 80 for mb in plan)
    # Micro-batches of two rows each, 40 wide: [40] [38] | [31, 9] [27, 11] | [23, 17] [14, 6, 5].
    assert [mb.rows for mb in plan] == [2, 2, 2] and padding_fraction(plan) == pytest.approx(1 - 221 / 240)
    thd = plan_micro_batches(LENGTHS, "packed", rows_per_micro_batch=4, token_budget=96, row_capacity=96, one_row=True)
    assert all(mb.rows == 1 for mb in thd) and padding_fraction(thd) == 0.0
    assert thd[0].cu_seqlens(torch.device("cpu")).tolist() == [0, 40, 78, 95]


def test_packed_mask_and_unpack():
    plan = plan_micro_batches([3, 2], "packed", rows_per_micro_batch=2, token_budget=10, row_capacity=5)
    (mb,) = plan
    mask = mb.attention_mask(torch.device("cpu"))[0, 0]
    want = torch.ones(5, 5, dtype=torch.bool)  # True = masked
    want[:3, :3] = torch.triu(torch.ones(3, 3, dtype=torch.bool), 1)
    want[3:, 3:] = torch.triu(torch.ones(2, 2, dtype=torch.bool), 1)
    assert torch.equal(mask, want)
    assert mb.position_ids(torch.device("cpu")).tolist() == [[0, 1, 2, 0, 1]]
    values = torch.arange(1.0, 6.0)[None]
    # Position 0 of every sequence (predicted from another sequence in a packed row) is zeroed.
    assert mb.unpack(values).tolist() == [[0.0, 2.0, 3.0], [0.0, 5.0, 0.0]]


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    work = tmp_path_factory.mktemp("layouts")
    for tp, pp in ((1, 1), (1, 2)):
        result = launch(run, (str(work), tp, pp), world_size=tp * pp, err_dir=str(work), timeout=300)
        assert result.ok, result.tail()
    return work


def _load(work, name, tp, pp, rank):
    from safetensors.torch import load_file

    return load_file(os.path.join(work, f"{name}_tp{tp}pp{pp}_rank{rank}.safetensors"))


@pytest.mark.parametrize("tp,pp", [(1, 1), (1, 2)])
def test_every_layout_gives_the_padded_reference(layouts, tp, pp):
    meta = json.loads((layouts / f"meta_tp{tp}pp{pp}.json").read_text())
    assert meta["packed"]["packed_rows"] > 0 and meta["packed"]["layout"] == "packed"
    assert meta["padded"]["padding"] > meta["bucketed"]["padding"] > meta["packed"]["padding"]
    lengths = make_batch()["lengths"]
    valid = torch.arange(WIDTH)[None] < lengths[:, None]
    for rank in range(tp * pp):
        ref = _load(layouts, "padded", tp, pp, rank)
        for name in ("bucketed", "packed"):
            got = _load(layouts, name, tp, pp, rank)
            for key in ("lp", "ent"):
                torch.testing.assert_close(got[key] * valid, ref[key] * valid, atol=2e-5, rtol=0)
                assert (got[key][~valid] == 0).all()
            grads = [k for k in ref if k.startswith("grad.")]
            assert grads
            for k in grads:
                torch.testing.assert_close(got[k], ref[k], atol=1e-6, rtol=1e-4, msg=f"{name} {k}")
            for key in ("loss", "grad_norm", "num_tokens", "clipfrac"):
                assert meta[name]["metrics"][key] == pytest.approx(meta["padded"]["metrics"][key], rel=1e-5,
                                                                   abs=1e-7), (name, key)
