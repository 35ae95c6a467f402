"""Progress bars of sampling, merges and exports: on a terminal, not in logs."""
import os
import sys

from diffengine.progress import progress_bar


def test_bars_show_on_a_terminal_and_stay_out_of_pipes(monkeypatch, capsys):
    with progress_bar(total=3, desc="merge", unit="stage") as bar:
        bar.update(3)
    assert bar.disable and capsys.readouterr().err == ""
    leader, follower = os.openpty()
    with open(follower, "w") as terminal:
        monkeypatch.setattr(sys, "stderr", terminal)
        with progress_bar(total=3, desc="SDXL single file", unit="tensor") as bar:
            assert not bar.disable
    os.close(leader)
