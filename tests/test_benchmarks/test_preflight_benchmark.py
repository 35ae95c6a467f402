"""The pre-flight benchmark writes its photos and times each way."""
from benchmarks.preflight import main


def test_times_each_way(tmp_path, capsys):
    rows = main(["--images", "10", "--workers", "2", "--repeats", "1",
                 "--folder", str(tmp_path)])
    assert list(rows) == ["header only", "decode, 1 process",
                          "decode, 2 workers"]
    assert all(seconds > 0 for seconds in rows.values())
    assert "s / 1,000 images" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []  # the photos are gone
