"""The training resolution a dataset's pipeline sets, as step files record
it."""
import pytest

import diffengine.datasets  # noqa: F401  (registers the transforms)
from diffengine.datasets.base import pipeline_resolution
from diffengine.registry import TRANSFORMS


@pytest.mark.parametrize(("pipeline", "expected"), [
    ([dict(type="ResizeShortestEdge", size=32),
      dict(type="CenterCrop", size=32)], "32x32"),
    # (height, width): the record is width × height, as kohya's
    ([dict(type="ResizeShortestEdge", size=64),
      dict(type="RandomCrop", size=(32, 48))], "48x32"),
    ([dict(type="BucketResizeCrop", resolution=48, min_bucket_reso=16,
           max_bucket_reso=96, bucket_reso_steps=16)], "48x48"),
    # images keep sizes of their own
    ([dict(type="ResizeShortestEdge", size=32)], None),
    ([], None),
])
def test_the_pipeline_sets_the_resolution(pipeline, expected):
    assert pipeline_resolution(
        [TRANSFORMS.build(t) for t in pipeline]) == expected
