import pytest

from diffengine.datasets import HFDataset, KohyaFolderDataset
from diffengine.datasets.validation_split import split_rows
from diffengine.errors import ConfigError
from tests.conftest import tiny_pipeline
from tests.test_datasets.test_kohya_folder import write_kohya_folder


def test_split_rows_holds_out_a_seeded_share():
    train = split_rows(24, 0.25, "train")
    held = split_rows(24, 0.25, "validation")
    assert len(held) == 6 and not set(train) & set(held)
    assert sorted(train + held) == list(range(24))
    assert split_rows(24, 0.25, "validation", seed=0) == held
    assert split_rows(24, 0.25, "validation", seed=1) != held
    assert split_rows(5, 0.01, "validation") != []  # at least one row
    assert split_rows(7, 0.0, "train") == list(range(7))


@pytest.mark.parametrize("options, message", [
    (dict(validation_fraction=1.0), r"validation_fraction=1\.0: give a share"),
    (dict(validation_fraction=0.0, subset="validation"),
     "holds no row; set validation_fraction"),
    (dict(validation_fraction=0.1, subset="val"), r"subset='val'; use one"),
])
def test_bad_split_options_are_named(options, message):
    with pytest.raises(ConfigError, match=message):
        split_rows(10, options["validation_fraction"],
                   options.get("subset", "train"))


def test_hf_dataset_train_and_validation_subsets_share_no_image(shapes_data):
    options = dict(dataset=shapes_data, validation_fraction=0.25,
                   pipeline=tiny_pipeline())
    train = HFDataset(**options)
    held = HFDataset(**options, subset="validation")
    assert (len(train), len(held)) == (18, 6)
    captions = [held.caption_at(i) for i in range(len(held))]
    rows = split_rows(24, 0.25, "validation")
    whole = HFDataset(dataset=shapes_data)
    assert captions == [whole.caption_at(r) for r in rows]
    files = {train.image_source(i)["path"] for i in range(len(train))}
    assert not files & {held.image_source(i)["path"] for i in range(6)}
    assert held[0]["inputs"]["img"].shape == (3, 32, 32)


def test_kohya_folder_holds_out_images_before_repeats(tmp_path, shapes_data):
    folder = str(tmp_path / "kohya")
    write_kohya_folder(folder, shapes_data)
    whole = KohyaFolderDataset(folder)
    train = KohyaFolderDataset(folder, validation_fraction=0.25)
    held = KohyaFolderDataset(folder, validation_fraction=0.25,
                              subset="validation")
    assert len(train.images) + len(held.images) == len(whole.images)
    assert not {i.path for i in train.images} & {i.path for i in held.images}
    assert len(held) == sum(i.repeats for i in held.images)
