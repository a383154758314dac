"""N:M (2:4) semi-structured masks: the n best of every group of m, ties to the lower index."""
from __future__ import annotations

import itertools

import pytest
import torch

from archs.sparse.semi_structured import is_n_of_m, n_of_m_mask


def brute_force(scores, mask, n, m):
    """Per group: survivors sorted by (-score, index), the first n kept."""
    rows = scores.reshape(scores.shape[0], -1).tolist()
    alive = mask.reshape(mask.shape[0], -1).tolist()
    out = []
    for row, row_alive in zip(rows, alive):
        kept = [False] * len(row)
        for start in range(0, len(row), m):
            group = [i for i in range(start, start + m) if row_alive[i]]
            for i in sorted(group, key=lambda i: (-row[i], i))[:n]:
                kept[i] = True
        out.append(kept)
    return torch.tensor(out).reshape(mask.shape)


@pytest.mark.parametrize("shape", [(6, 8), (4, 2, 2, 2), (5, 16)])
@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (4, 4)])
def test_keeps_the_n_best_survivors_of_every_group(shape, n, m):
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(shape, generator=generator)
    mask = torch.rand(shape, generator=generator) < 0.7
    result = n_of_m_mask(scores, mask, n, m)
    assert result.shape == mask.shape and result.dtype == torch.bool
    assert torch.equal(result, brute_force(scores, mask, n, m))
    assert not (result & ~mask).any()
    assert is_n_of_m(result, n, m)


def test_ties_go_to_the_lower_index_and_thin_groups_keep_everything():
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0, 5.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, True, False, True, False, False]])
    assert n_of_m_mask(scores, mask).tolist() == [[True, True, False, False,
                                                   False, True, False, False]]


def test_every_2_of_4_pattern_is_recognised():
    for kept in itertools.combinations(range(4), 2):
        mask = torch.zeros(1, 4)
        mask[0, list(kept)] = 1
        assert is_n_of_m(mask)
    assert not is_n_of_m(torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    assert not is_n_of_m(torch.ones(2, 6))           # rows of 6 are no groups of 4


@pytest.mark.parametrize("shape,n,m", [((4, 6), 2, 4), ((8,), 2, 4), ((4, 8), 3, 2), ((4, 8), 0, 4)])
def test_impossible_patterns_are_refused(shape, n, m):
    with pytest.raises(ValueError):
        n_of_m_mask(torch.ones(shape), torch.ones(shape, dtype=torch.bool), n, m)
