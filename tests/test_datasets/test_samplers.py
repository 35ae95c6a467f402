from collections import Counter

import pytest

from diffengine.datasets import (
    AspectRatioBatchSampler,
    DeterministicSampler,
    HFDataset,
    sample_seed,
    samplers,
)
from diffengine.errors import ConfigError


class Rows:

    def __len__(self):
        return 10


def test_samples_carry_seeds_of_seed_epoch_and_index():
    sampler = DeterministicSampler(Rows(), shuffle=True, seed=3)
    first = list(sampler)
    assert sorted(i for i, _ in first) == list(range(10))
    assert all(s == sample_seed(3, 0, i) for i, s in first)
    assert list(sampler) == first  # same epoch, same order and seeds
    sampler.set_epoch(1)
    second = list(sampler)
    assert [i for i, _ in second] != [i for i, _ in first]
    assert all(s == sample_seed(3, 1, i) for i, s in second)
    assert len({s for _, s in first + second}) == 20


def test_skip_drops_the_start_of_one_epoch():
    sampler = DeterministicSampler(Rows(), shuffle=True, seed=3)
    full = list(sampler)
    sampler.skip(4)
    assert list(sampler) == full[4:]
    assert list(sampler) == full  # only once


# Buckets of ``orientation_data`` at 48² px: 1:3 portraits (3 images),
# squares (2), 4:3 photos (2), 3:1 landscapes (3).
BUCKET_PIPELINE = [
    dict(type="BucketResizeCrop", resolution=48, min_bucket_reso=16,
         max_bucket_reso=96, bucket_reso_steps=8),
    dict(type="ImageToNormalizedTensor"),
    dict(type="PackInputs"),
]


@pytest.fixture()
def bucketed(orientation_data):
    return HFDataset(orientation_data, pipeline=BUCKET_PIPELINE)


def batch_sampler(dataset, batch_size, monkeypatch, rank=0, world_size=1,
                  **options):
    monkeypatch.setattr(samplers, "get_dist_info", lambda: (rank, world_size))
    sampler = DeterministicSampler(dataset, shuffle=True, seed=5)
    return AspectRatioBatchSampler(sampler, batch_size, **options)


def test_batches_hold_one_bucket_and_every_image_once(bucketed, monkeypatch):
    sampler = batch_sampler(bucketed, 2, monkeypatch)
    buckets = bucketed.row_buckets()
    assert dict(Counter(buckets)) == {(80, 24): 3, (48, 48): 2, (40, 56): 2,
                                      (24, 80): 3}
    batches = list(sampler)
    assert len(batches) == len(sampler) == 6
    real = []
    for batch in batches:
        assert len(batch) == 2
        assert len({buckets[row] for row, _, _ in batch}) == 1
        weights = [w for _, _, w in batch]
        # a bucket's last batch: one real image at twice the weight, padding
        assert weights in ([1.0, 1.0], [2.0, 0.0])
        real += [row for row, _, w in batch if w > 0]
        assert all(s == sample_seed(5, 0, row) for row, s, _ in batch)
    assert sorted(real) == list(range(10))
    # the samples carry the weights and have the bucket's size
    for row, seed, weight in batches[0]:
        inputs = bucketed[(row, seed, weight)]["inputs"]
        assert inputs["loss_weight"] == weight
        assert inputs["img"].shape[1:] == buckets[row]


def test_each_epoch_shuffles_from_the_seed(bucketed, monkeypatch):
    sampler = batch_sampler(bucketed, 2, monkeypatch)
    first = list(sampler)
    assert list(sampler) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert [[r for r, *_ in b] for b in second] != [
        [r for r, *_ in b] for b in first]
    assert all(s == sample_seed(5, 1, r) for b in second for r, s, _ in b)


def test_two_processes_split_the_batches_of_one(bucketed, monkeypatch):
    one = list(batch_sampler(bucketed, 4, monkeypatch))
    ranks = [list(batch_sampler(bucketed, 2, monkeypatch, rank, 2))
             for rank in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(one) == 4
    assert [a + b for a, b in zip(*ranks, strict=True)] == one
    # 3 images in a batch of 4: weight 4/3 each and one padding at 0
    weights = sorted(tuple(w for *_, w in batch) for batch in one)
    assert weights[0] == (4 / 3, 4 / 3, 4 / 3, 0.0)


def test_skip_counts_batches(bucketed, monkeypatch):
    sampler = batch_sampler(bucketed, 2, monkeypatch)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.skip(4)
    assert list(sampler) == full[4:]
    assert list(sampler) == full  # only once


def test_drop_last_drops_incomplete_batches(bucketed, monkeypatch):
    sampler = batch_sampler(bucketed, 2, monkeypatch, drop_last=True)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 4
    assert all(w == 1.0 for b in batches for *_, w in b)
    assert "dropped" in sampler.bucket_table()
    with pytest.raises(ConfigError, match=r"no bucket holds 8 images"):
        batch_sampler(bucketed, 8, monkeypatch, drop_last=True)


def test_bucket_table(bucketed, monkeypatch):
    table = batch_sampler(bucketed, 2, monkeypatch, 0, 2).bucket_table()
    assert table.splitlines() == [
        "aspect-ratio buckets: 4 buckets, 10 images, batches of 4 "
        "(2 × 2 processes), 4 an epoch",
        "  width  height  aspect  images  batches  padding",
        "     24      80    0.30       3        1        1",
        "     48      48    1.00       2        1        2",
        "     56      40    1.40       2        1        2",
        "     80      24    3.33       3        1        1",
    ]


def test_a_pipeline_without_buckets_is_an_error(orientation_data,
                                                monkeypatch):
    plain = HFDataset(orientation_data)
    with pytest.raises(ConfigError, match="has no BucketResizeCrop"):
        batch_sampler(plain, 2, monkeypatch)
