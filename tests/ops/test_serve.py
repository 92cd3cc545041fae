"""`kohaku serve` refuses a bad config with one line before it starts anything (the
working path is what tests/prefect_server.py starts every session)."""

from __future__ import annotations

import pytest

from kohaku.cli import main


def test_serve_refuses_a_bad_config_before_starting(tmp_path, capsys):
    bad = tmp_path / "run.toml"
    bad.write_text('[sample]\nsource = "db.sqlite"\nseed = "x"\n')
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--config", str(bad), "--home", str(tmp_path / "prefect")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kohaku: error: invalid config: sample.seed")
    assert not (tmp_path / "prefect").exists()  # nothing started
