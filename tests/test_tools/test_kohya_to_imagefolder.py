import json

import pytest

from diffengine.errors import ConfigError
from diffengine.tools.kohya_to_imagefolder import main
from tests.test_datasets.test_kohya_folder import write_kohya_folder


def test_writes_metadata_jsonl(tmp_path, shapes_data, capsys):
    write_kohya_folder(str(tmp_path), shapes_data)
    main([str(tmp_path)])
    with open(tmp_path / "metadata.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 5 and {"file_name", "text", "repeats"} == set(rows[0])
    assert "(5 images)" in capsys.readouterr().out


def test_refuses_to_overwrite_without_the_flag(tmp_path, shapes_data, capsys):
    write_kohya_folder(str(tmp_path), shapes_data)
    main([str(tmp_path)])
    with pytest.raises(ConfigError, match=r"metadata\.jsonl exists; pass "
                       "--overwrite to replace it"):
        main([str(tmp_path)])
    main([str(tmp_path), "--overwrite"])
    assert "(5 images)" in capsys.readouterr().out
