"""Training sampler: aspect grouping, sharding across ranks, exact resumption."""
import itertools

from mask2former.data import samplers
from mask2former.data.samplers import GroupedInfiniteBatchSampler, InferenceSampler


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_batches_group_by_aspect_and_resume_exactly():
    groups = [0, 1] * 10 + [0] * 5
    full = _take(GroupedInfiniteBatchSampler(groups, 3, seed=7), 12)
    for batch in full:
        assert len({groups[i] for i, _ in batch}) == 1
    resumed = _take(GroupedInfiniteBatchSampler(groups, 3, seed=7, start_iter=5), 7)
    assert resumed == full[5:]
    other_seed = _take(GroupedInfiniteBatchSampler(groups, 3, seed=8), 12)
    assert other_seed != full


def test_ranks_get_disjoint_shards(monkeypatch):
    groups = [0] * 16
    per_rank = []
    for rank in range(2):
        monkeypatch.setattr(samplers.comm, "get_rank", lambda r=rank: r)
        monkeypatch.setattr(samplers.comm, "get_world_size", lambda: 2)
        per_rank.append(_take(GroupedInfiniteBatchSampler(groups, 2, seed=0), 4))
    indices = [{i for batch in batches for i, _ in batch} for batches in per_rank]
    keys = [{k for batch in batches for _, k in batch} for batches in per_rank]
    assert indices[0].isdisjoint(indices[1]) and indices[0] | indices[1] == set(range(16))
    assert keys[0].isdisjoint(keys[1])
    monkeypatch.setattr(samplers.comm, "get_rank", lambda: 1)
    assert list(InferenceSampler(5)) == [3, 4]
