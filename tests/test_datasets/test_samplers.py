from diffengine.datasets import DeterministicSampler, sample_seed


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
