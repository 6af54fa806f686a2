"""verl_prpo.segmentation against plain-Python references written from ALGORITHMS.md (PRPO step 1, PRL steps)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from verl_prpo.segmentation import (
    Segmentation,
    broadcast_segment_scores,
    build_newline_token_mask,
    response_lengths,
    segment,
    segmentation_from_ids,
)

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------------------------------------------------
# plain-Python references
# ----------------------------------------------------------------------------------------------------------------------


def ref_greedy(priority_row, mask_row, k, m):
    """Accept positions in descending priority (ties: earlier), c >= m, valid, |c - c'| >= m; at most k."""
    L = len(mask_row)
    order = sorted((c for c in range(L) if mask_row[c]), key=lambda c: (-float(priority_row[c]), c))
    cuts = []
    for c in order:
        if len(cuts) == k:
            break
        if c >= m and all(abs(c - a) >= m for a in cuts):
            cuts.append(c)
    return sorted(cuts)


def ref_released(priority_row, mask_row, k, m):
    """ALGORITHMS.md PRPO step 1, ``cut_rule = released``, step by step (holes are not candidates)."""
    L = length_of(mask_row)
    if L < k + 1:
        return []
    valid = [t for t in range(L) if mask_row[t]]
    c = sorted(sorted(valid, key=lambda t: (-float(priority_row[t]), t))[:k])
    kept = []
    for i in range(len(c) - 1):
        if c[i + 1] - c[i] > m:
            kept.append(c[i])
        else:
            later = [cj for cj in c[i + 1:] if cj - c[i] > m]
            if later:
                kept.append(later[0])
    cuts, last = [], 0
    for a in kept:
        if a - last >= m:
            cuts.append(a)
            last = a
    return cuts


def ref_ids_from_cuts(mask_row, cuts):
    """segment id per position: number of cuts <= t on valid positions, -1 elsewhere."""
    return [sum(1 for c in cuts if c <= t) if mask_row[t] else -1 for t in range(len(mask_row))]


def length_of(mask_row):
    valid = [t for t, v in enumerate(mask_row) if v]
    return valid[-1] + 1 if valid else 0


def check_consistent(seg: Segmentation, mask):
    """segment_ids / starts / num_segments / spans agree with each other."""
    B, L = mask.shape
    assert seg.segment_ids.dtype == torch.long and seg.segment_ids.shape == mask.shape
    for i in range(B):
        n = length_of(mask[i].tolist())
        starts = [t for t in range(L) if seg.starts[i, t]]
        assert (starts[:1] == [0]) == (n > 0)
        assert all(s < n for s in starts)
        assert int(seg.num_segments[i]) == len(starts)
        assert ref_ids_from_cuts(mask[i].tolist(), starts[1:]) == seg.segment_ids[i].tolist()
        assert seg.spans(i) == list(zip(starts, starts[1:] + [n]))


@st.composite
def masks(draw, max_b=6, max_l=40, holes=True):
    B, L = draw(st.integers(1, max_b)), draw(st.integers(1, max_l))
    rows = []
    for _ in range(B):
        n = draw(st.integers(0, L))
        row = [1] * n + [0] * (L - n)
        if holes and n > 2 and draw(st.booleans()):
            row[draw(st.integers(1, n - 2))] = 0
        rows.append(row)
    return torch.tensor(rows)


# ----------------------------------------------------------------------------------------------------------------------
# entropy: hand cases
# ----------------------------------------------------------------------------------------------------------------------


def test_entropy_spike_starts_a_segment_and_gap_rule():
    L = 30
    ent = torch.zeros(1, L)
    ent[0, 12], ent[0, 15], ent[0, 25] = 3.0, 2.5, 2.0  # 15 is within m=10 of 12: rejected
    seg = segment("entropy", torch.ones(1, L), entropy=ent, k=5, m=10)
    assert seg.spans(0) == [(0, 12), (12, 25), (25, 30)]
    assert seg.segment_ids[0, 11] == 0 and seg.segment_ids[0, 12] == 1 and seg.segment_ids[0, 25] == 2
    assert seg.num_segments.tolist() == [3]


def test_entropy_ties_go_to_the_earlier_token():
    ent = torch.zeros(1, 40)
    ent[0, 20], ent[0, 25] = 1.0, 1.0  # tie: 20 first, then 25 is too close
    seg = segment("entropy", torch.ones(1, 40), entropy=ent, k=1, m=10)
    assert seg.spans(0) == [(0, 20), (20, 40)]
    # all equal: greedy from the left at the minimum gap
    seg = segment("entropy", torch.ones(1, 40), entropy=torch.ones(1, 40), k=5, m=10)
    assert seg.spans(0) == [(0, 10), (10, 20), (20, 30), (30, 40)]


def test_entropy_first_cut_at_least_m():
    ent = torch.zeros(1, 20)
    ent[0, 3] = 9.0  # c < m: not eligible
    ent[0, 10] = 1.0
    seg = segment("entropy", torch.ones(1, 20), entropy=ent, k=5, m=10)
    assert seg.spans(0) == [(0, 10)] + [(10, 20)]


@pytest.mark.parametrize("n", [0, 1, 5, 10])
def test_entropy_short_response_is_one_segment(n):
    mask = torch.zeros(1, 12)
    mask[0, :n] = 1
    seg = segment("entropy", mask, entropy=torch.rand(1, 12), k=5, m=10)
    assert seg.num_segments.tolist() == [1 if n else 0]
    assert seg.segment_ids[0].tolist() == [0] * n + [-1] * (12 - n)
    assert seg.spans(0) == ([(0, n)] if n else [])


def test_entropy_k_caps_the_cuts_and_padding_is_ignored():
    ent = torch.arange(100, dtype=torch.float32).flip(0)[None, :].clone()  # decreasing: earliest is highest
    ent[0, 60:] = 1000.0  # padding beyond the mask must never be picked
    mask = torch.zeros(1, 100)
    mask[0, :60] = 1
    seg = segment("entropy", mask, entropy=ent, k=2, m=5)
    assert [s for s, _ in seg.spans(0)] == [0, 5, 10]
    seg = segment("entropy", mask, entropy=ent, k=100, m=5)
    assert [s for s, _ in seg.spans(0)] == list(range(0, 60, 5))  # stops when nothing is eligible


def test_entropy_errors():
    mask = torch.ones(2, 8)
    with pytest.raises(ValueError, match="entropy"):
        segment("entropy", mask)
    ent = torch.rand(2, 8)
    ent[1, 3] = float("nan")
    with pytest.raises(ValueError, match="entropy"):
        segment("entropy", mask, entropy=ent)
    mask[1, 3:] = 0  # NaN outside the mask is fine
    segment("entropy", mask, entropy=ent, m=2)
    with pytest.raises(ValueError, match="unknown segmentation strategy"):
        segment("sentences", mask)


@SETTINGS
@given(masks(), st.integers(1, 6), st.integers(1, 12), st.integers(0, 3))
def test_entropy_matches_reference(mask, k, m, levels):
    # few distinct levels: plenty of ties
    check_entropy_against_reference(mask, k, m, levels, seed=k * 100 + m)


def check_entropy_against_reference(mask, k, m, levels, seed):
    """Greedy entropy segmentation of random entropies with ``levels + 1`` distinct values against ``ref_greedy``."""
    g = torch.Generator().manual_seed(seed)
    ent = torch.randint(0, levels + 1, mask.shape, generator=g).float()
    seg = segment("entropy", mask, entropy=ent, k=k, m=m)
    for i in range(mask.shape[0]):
        cuts = ref_greedy(ent[i].tolist(), mask[i].tolist(), k, m)
        assert seg.segment_ids[i].tolist() == ref_ids_from_cuts(mask[i].tolist(), cuts)
    check_consistent(seg, mask)


def test_greedy_ties_across_blocks_after_a_pick():
    # blocks of 64: picks 70 and 130 (3.0, the earlier first; after a pick its block's maximum must be the new one),
    # then 2.0 at 20 (block 0) or 140 (block 2): the earlier, 20
    ent = torch.zeros(1, 256)
    ent[0, 70] = ent[0, 130] = 3.0
    ent[0, 20] = ent[0, 140] = 2.0
    seg = segment("entropy", torch.ones(1, 256), entropy=ent, k=3, m=10)
    assert [s for s, _ in seg.spans(0)] == [0, 20, 70, 130]


@SETTINGS
@given(masks(max_b=4, max_l=300), st.integers(1, 6), st.integers(1, 40), st.integers(0, 2))
def test_entropy_matches_reference_across_blocks(mask, k, m, levels):
    # rows longer than one 64-token block of the two-level argmax, ties across blocks (few levels)
    check_entropy_against_reference(mask, k, m, levels, seed=k * 1000 + m)


# ----------------------------------------------------------------------------------------------------------------------
# entropy, cut_rule = released (the authors' code)
# ----------------------------------------------------------------------------------------------------------------------

WORKED_CASES = [  # ALGORITHMS.md PRPO step 1: (L, {position: entropy}, released cuts, greedy cuts), k = 5, m = 10
    (100, {15: 1.0, 35: 1.0, 55: 1.0, 75: 1.0, 95: 1.0}, [15, 35, 55, 75], [15, 35, 55, 75, 95]),
    (100, {20: 5.0, 30: 4.0, 50: 3.0, 70: 3.0, 90: 3.0}, [50, 70], [20, 30, 50, 70, 90]),
    (25, {1: 2.34, 4: 2.77, 11: 2.89, 16: 2.24, 24: 2.77}, [16], [11, 24]),
]


@pytest.mark.parametrize("L, spikes, released, greedy", WORKED_CASES)
def test_released_rule_worked_cases(L, spikes, released, greedy):
    ent = torch.zeros(2, 120)
    for t, h in spikes.items():
        ent[:, t] = h
    mask = torch.zeros(2, 120)
    mask[:, :L] = 1
    for rule, want in (("released", released), ("greedy", greedy)):
        seg = segment("entropy", mask, entropy=ent, k=5, m=10, cut_rule=rule)
        for i in range(2):
            assert [s for s, _ in seg.spans(i)] == [0] + want, rule
        assert ref_released(ent[0].tolist(), mask[0].tolist(), 5, 10) == released
        check_consistent(seg, mask)


def test_released_rule_short_response_and_errors():
    mask = torch.zeros(1, 20)
    mask[0, :5] = 1  # L = 5 < k + 1 = 6: one segment
    seg = segment("entropy", mask, entropy=torch.rand(1, 20), k=5, m=1, cut_rule="released")
    assert seg.num_segments.tolist() == [1]
    with pytest.raises(ValueError, match="unknown cut_rule"):
        segment("entropy", mask, entropy=torch.rand(1, 20), cut_rule="paper")
    with pytest.raises(ValueError, match="entropy strategy only"):
        segment("uniform", mask, cut_rule="released")


@SETTINGS
@given(masks(max_l=60), st.integers(1, 7), st.integers(1, 12), st.integers(0, 4))
def test_released_rule_matches_transcription(mask, k, m, levels):
    g = torch.Generator().manual_seed(k * 100 + m + levels)
    ent = torch.randint(0, levels + 1, mask.shape, generator=g).float() + torch.rand(mask.shape, generator=g) * (
        levels % 2)  # even levels: many ties; odd: distinct values
    seg = segment("entropy", mask, entropy=ent, k=k, m=m, cut_rule="released")
    for i in range(mask.shape[0]):
        cuts = ref_released(ent[i].tolist(), mask[i].tolist(), k, m)
        assert seg.segment_ids[i].tolist() == ref_ids_from_cuts(mask[i].tolist(), cuts)
    check_consistent(seg, mask)
    # greedy is unchanged by the option
    greedy = segment("entropy", mask, entropy=ent, k=k, m=m)
    assert torch.equal(greedy.segment_ids, segment("entropy", mask, entropy=ent, k=k, m=m, cut_rule="greedy").segment_ids)


# ----------------------------------------------------------------------------------------------------------------------
# uniform / random / fixed / newline
# ----------------------------------------------------------------------------------------------------------------------


def test_uniform_hand_cases():
    seg = segment("uniform", torch.ones(1, 10), k=5)
    assert [s for s, _ in seg.spans(0)] == [0, 1, 3, 5, 6, 8]  # floor(j * 10 / 6), j = 1..5
    seg = segment("uniform", torch.ones(1, 3), k=5)
    assert [s for s, _ in seg.spans(0)] == [0, 1, 2]  # floor(j * 3 / 6) = 0, 1, 1, 2, 2: deduplicated, 0 dropped
    seg = segment("uniform", torch.tensor([[1, 1, 1, 1, 0, 0]]), k=1)
    assert seg.spans(0) == [(0, 2), (2, 4)]  # L_i = 4, not the padded length


@SETTINGS
@given(masks(), st.integers(1, 7))
def test_uniform_matches_reference(mask, k):
    seg = segment("uniform", mask, k=k)
    for i in range(mask.shape[0]):
        n = length_of(mask[i].tolist())
        cuts = sorted({(j * n) // (k + 1) for j in range(1, k + 1)} & set(range(1, n)))
        assert seg.segment_ids[i].tolist() == ref_ids_from_cuts(mask[i].tolist(), cuts)
    check_consistent(seg, mask)


@SETTINGS
@given(masks(), st.integers(1, 6), st.integers(1, 8), st.integers(0, 2**31 - 1))
def test_random_gap_rule_and_reproducible(mask, k, m, seed):
    seg = segment("random", mask, k=k, m=m, seed=seed)
    again = segment("random", mask, k=k, m=m, seed=seed)
    assert torch.equal(seg.segment_ids, again.segment_ids)
    check_consistent(seg, mask)
    for i in range(mask.shape[0]):
        cuts = [s for s, _ in seg.spans(i)][1:]
        row = mask[i].tolist()
        assert len(cuts) <= k
        assert all(c >= m and row[c] for c in cuts)
        assert all(b - a >= m for a, b in zip(cuts, cuts[1:]))
        if len(cuts) < k:  # greedy stops only when nothing is eligible
            free = [c for c in range(len(row)) if row[c] and c >= m and all(abs(c - a) >= m for a in cuts)]
            assert free == []


def test_random_differs_by_seed():
    mask = torch.ones(4, 200)
    a = segment("random", mask, k=5, m=3, seed=0).segment_ids
    b = segment("random", mask, k=5, m=3, seed=1).segment_ids
    assert not torch.equal(a, b)


@SETTINGS
@given(masks(), st.integers(1, 9))
def test_fixed_matches_reference(mask, step_len):
    seg = segment("fixed", mask, step_len=step_len)
    for i in range(mask.shape[0]):
        n = length_of(mask[i].tolist())
        cuts = list(range(step_len, n, step_len))
        assert seg.segment_ids[i].tolist() == ref_ids_from_cuts(mask[i].tolist(), cuts)
    check_consistent(seg, mask)


def test_newline_hand_case():
    # token 7 is "\n\n"; vocab of 10
    nl = torch.zeros(10, dtype=torch.bool)
    nl[7] = True
    responses = torch.tensor([[1, 7, 2, 3, 7, 4, 7, 0], [7, 7, 1, 0, 7, 0, 0, 0], [12, 7, -1, 2, 0, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0]])
    seg = segment("newline", mask, responses=responses, newline_token_mask=nl)
    assert seg.spans(0) == [(0, 2), (2, 5), (5, 7)]  # the "\n\n" at the last valid token cuts nothing
    assert seg.spans(1) == [(0, 1), (1, 2), (2, 3)]  # the "\n\n" past the mask is ignored
    assert seg.spans(2) == [(0, 2), (2, 4)]  # out-of-vocabulary ids are not newlines
    check_consistent(seg, mask)
    with pytest.raises(ValueError, match="newline_token_mask"):
        segment("newline", mask)


@SETTINGS
@given(masks(), st.integers(0, 2**31 - 1))
def test_newline_matches_reference(mask, seed):
    g = torch.Generator().manual_seed(seed)
    responses = torch.randint(0, 6, mask.shape, generator=g)
    nl = torch.tensor([False, True, False, False, True, False])
    seg = segment("newline", mask, responses=responses, newline_token_mask=nl)
    for i in range(mask.shape[0]):
        row, n = mask[i].tolist(), length_of(mask[i].tolist())
        cuts = [t + 1 for t in range(n) if row[t] and nl[responses[i, t]] and t + 1 < n]
        assert seg.segment_ids[i].tolist() == ref_ids_from_cuts(row, cuts)
    check_consistent(seg, mask)


class FakeTokenizer:
    vocab = ["a", "\n", "\n\n", "b\n\nc", "\n \n", "x\n\n\n"]

    def __len__(self):
        return len(self.vocab)

    def decode(self, ids, **kwargs):
        return "".join(self.vocab[i] for i in ids)


def test_build_newline_token_mask():
    assert build_newline_token_mask(FakeTokenizer()).tolist() == [False, False, True, True, False, True]
    padded = build_newline_token_mask(FakeTokenizer(), vocab_size=8)
    assert padded.shape == (8,) and not padded[6:].any()


# ----------------------------------------------------------------------------------------------------------------------
# broadcast, ids round trip, lengths
# ----------------------------------------------------------------------------------------------------------------------


def test_broadcast_segment_scores():
    scores = torch.tensor([[0.1, 0.2, 0.3], [0.9, 0.0, 0.0]])
    ids = torch.tensor([[0, 0, 1, 2, -1], [0, 0, -1, -1, -1]])
    out = broadcast_segment_scores(scores, ids)
    torch.testing.assert_close(out, torch.tensor([[0.1, 0.1, 0.2, 0.3, 0.0], [0.9, 0.9, 0.0, 0.0, 0.0]]))
    assert ids.tolist()[0] == [0, 0, 1, 2, -1]  # input untouched
    ids32 = ids.int()
    broadcast_segment_scores(scores, ids32)
    assert ids32.tolist() == ids.tolist()
    with pytest.raises(ValueError, match=r"segment ids must lie in \[-1, 2\)"):
        broadcast_segment_scores(scores[:, :2], ids)


@SETTINGS
@given(masks(), st.integers(1, 5))
def test_broadcast_matches_loops(mask, k):
    seg = segment("uniform", mask, k=k)
    scores = torch.rand(mask.shape[0], k + 1)
    out = broadcast_segment_scores(scores, seg.segment_ids)
    for i in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            s = int(seg.segment_ids[i, t])
            assert out[i, t].item() == (scores[i, s].item() if s >= 0 else 0.0)


@SETTINGS
@given(masks(), st.integers(1, 4))
def test_segmentation_from_ids_round_trip(mask, k):
    seg = segment("uniform", mask, k=k)
    back = segmentation_from_ids(seg.segment_ids, mask)
    assert torch.equal(back.segment_ids, seg.segment_ids)
    assert torch.equal(back.num_segments, seg.num_segments)
    for i in range(mask.shape[0]):
        row = mask[i].tolist()
        ids = seg.segment_ids[i].tolist()
        # a rebuilt segment starts at the first valid token of its id (a cut that fell into a hole moves right)
        firsts = [t for t in range(len(row)) if row[t] and (t == 0 or ids[t] not in ids[:t])]
        assert [s for s, _ in back.spans(i)] == firsts


def test_response_lengths():
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    assert response_lengths(mask).tolist() == [4, 0, 5]
    assert response_lengths(mask.bool()).tolist() == [4, 0, 5]
    assert response_lengths(mask.float()).tolist() == [4, 0, 5]
