from pathlib import Path


def test_done():
    assert Path("/app/slow-b.txt").read_text().strip() == "done"
