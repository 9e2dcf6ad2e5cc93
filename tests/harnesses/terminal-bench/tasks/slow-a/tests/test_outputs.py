from pathlib import Path


def test_done():
    assert Path("/app/slow-a.txt").read_text().strip() == "done"
