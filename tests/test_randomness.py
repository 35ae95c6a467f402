"""Per-sample random draws: a sample's numbers come from its seed and
stream alone, whatever batch it is drawn in."""
import pytest
import torch

from diffengine.datasets import sample_seed
from diffengine.randomness import STREAMS, Randomness, stream_seed


def test_stream_seeds_are_63_bit_repeatable_and_distinct():
    seeds = {(seed, stream): stream_seed(seed, stream)
             for seed in (0, 1, 2, 2**62, 2**63 - 1) for stream in STREAMS}
    assert all(0 <= s < 2**63 for s in seeds.values())
    assert all(stream_seed(*key) == s for key, s in seeds.items())
    # no two (seed, stream) pairs share a generator seed
    assert len(set(seeds.values())) == len(seeds)


def test_the_data_model_and_validation_streams_of_one_seed_differ():
    draws = [Randomness.from_seeds([7], stream).randn(8)
             for stream in ("data", "model", "validation")]
    assert not torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[1], draws[2])
    assert not torch.equal(draws[0], draws[2])


def test_a_sample_draws_the_same_numbers_in_any_batch():
    alone = Randomness.from_seeds([11], "model")
    in_batch = Randomness.from_seeds([5, 11, 3], "model")
    reordered = Randomness.from_seeds([11, 5], "model")
    expected = alone.randn(2, 3)[0]
    assert torch.equal(in_batch.randn(2, 3)[1], expected)
    assert torch.equal(reordered.randn(2, 3)[0], expected)
    # the next draw continues each sample's own stream
    assert torch.equal(in_batch.rand()[1], alone.rand()[0])


def test_seeds_of_run_seed_epoch_and_index_give_distinct_repeatable_draws():
    def draw(seed, epoch, index):
        return Randomness.from_seeds([sample_seed(seed, epoch, index)],
                                     "data").randn(4)[0]

    reference = draw(3, 0, 5)
    assert torch.equal(draw(3, 0, 5), reference)
    for other in ((3, 0, 6), (3, 1, 5), (4, 0, 5)):
        assert not torch.equal(draw(*other), reference), other


def test_shapes_types_and_ranges_of_each_draw():
    randomness = Randomness.from_seeds(range(6), "model")
    assert len(randomness) == 6
    normal = randomness.randn(2, 3)
    assert normal.shape == (6, 2, 3) and normal.dtype == torch.float32
    uniform = randomness.rand()
    assert uniform.shape == (6, ) and uniform.dtype == torch.float32
    assert ((uniform >= 0) & (uniform < 1)).all()
    integers = torch.cat([randomness.randint(3) for _ in range(20)])
    assert integers.dtype == torch.int64
    assert set(integers.tolist()) == {0, 1, 2}
    permutations = randomness.randperm(5)
    assert permutations.shape == (6, 5)
    assert all(sorted(row.tolist()) == [0, 1, 2, 3, 4]
               for row in permutations)


def test_a_shared_generator_serves_its_samples_in_turn():
    shared = torch.Generator().manual_seed(0)
    drawn = Randomness([shared, shared]).randn(3)
    expected = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(drawn, expected)


def test_split_gives_one_randomness_per_sample_on_the_same_streams():
    randomness = Randomness.from_seeds([1, 2], "data", device="meta")
    first, second = randomness.split()
    assert (len(first), len(second)) == (1, 1)
    assert first.generators[0] is randomness.generators[0]
    assert second.device == torch.device("meta")
    assert torch.equal(Randomness(second.generators).randn(4)[0],
                       Randomness.from_seeds([2], "data").randn(4)[0])


def test_results_go_to_the_device_and_the_numbers_stay_cpu_drawn():
    on_meta = Randomness.from_seeds([1], "model", device="meta")
    assert on_meta.randn(2).device == torch.device("meta")
    assert on_meta.generators[0].device == torch.device("cpu")


def test_no_generator_is_refused():
    with pytest.raises(ValueError,
                       match=r"^Randomness needs at least one generator\.$"):
        Randomness([])
