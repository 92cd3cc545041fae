"""One line, exit code 2, no traceback: bad config or input on every command, found
before a stage starts (and before torch is imported: these tests never load it)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kohaku.cli import main
from kohaku.errors import ConfigError, InputError, user_message
from kohaku.sample.config import SampleConfig

TRAIN_ONLY = '[train.model]\npath = "nowhere.safetensors"\n'


def fails(argv: list[str], capsys) -> str:
    """The command's stderr after it exited with code 2."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("kohaku: error: ")
    return err.strip()


@pytest.mark.parametrize(
    ("argv", "toml", "fragment"),
    [
        (["sample", "-c", "missing.toml"], None, "config file missing.toml does not exist"),
        (["sample", "-c", "run.toml"], "[tag]\nlayout = 'delta'\n",
         "the config has no [sample] section"),
        (["build-dataset", "--preset", "delta"], None, "sample.source: Field required"),
        (["tag", "-c", "run.toml"], "[tag]\nlayout = 'nope'\n", "invalid config: tag.layout"),
        (["download", "-c", "run.toml", "--set", "download.bogus=1"], "",
         "download.bogus: Extra inputs are not permitted"),
        (["buckets", "--preset", "delta", "--run-dir", "run"], None,
         "has no finished download stage"),
        (["config", "--preset", "omega"], None, "unknown preset 'omega'"),
        (["config", "-c", "run.toml"], "[sample\n", "is not valid TOML"),
        (["train", "-c", "run.toml"], "[sample]\nsource = 'db'\n",
         "the config has no [train] section"),
        (["train", "-c", "run.toml", "--set", "train.batch_size=0"], TRAIN_ONLY,
         "train.batch_size"),
        (["train", "-c", "run.toml", "--preset", "delta"], TRAIN_ONLY,
         "model path " + "{tmp}/nowhere.safetensors does not exist"),
        (["evaluate", "--preset", "epsilon"], None, "the config has no [evaluate] section"),
        (["export", "--base", "nowhere", "--lokr", "x", "--out", "o"], None,
         "model path nowhere does not exist"),
        (["metadata", "sync", "-c", "missing.toml"], None, "sync config missing.toml"),
        (["metadata", "snapshots", "--store", "nowhere"], None,
         "nowhere is not a metadata store (no store.json)"),
        (["export-parquet", "--source", "nowhere.db", "--out", "pq"], None,
         "sample.source nowhere.db does not exist"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(argv, toml, fragment, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if toml is not None:
        (tmp_path / "run.toml").write_text(toml)
    assert fragment.format(tmp=tmp_path) in fails(argv, capsys)


def test_user_message_is_one_line_naming_the_fields(tmp_path):
    try:
        SampleConfig.model_validate({"seed": "x"})
    except ValidationError as exc:
        raw = exc
    assert user_message(raw) == (
        "invalid SampleConfig: source: Field required; seed: Input should be a valid integer, "
        "unable to parse string as an integer"
    )
    try:  # a ConfigError quoting a ValidationError (as the merge recipe loader raises it)
        raise ConfigError(f"merge recipe r.toml: {raw}") from raw
    except ConfigError as exc:
        assert user_message(exc) == "merge recipe r.toml: " + user_message(raw).split(": ", 1)[1]
    missing = FileNotFoundError(2, "No such file or directory", str(tmp_path / "x"))
    assert user_message(missing) == f"{tmp_path / 'x'}: No such file or directory"
    try:  # a stage failed by an input error is one too (flows' StageFailed)
        raise RuntimeError("stage train failed: InputError: bad") from InputError("bad")
    except RuntimeError as exc:
        assert user_message(exc) == "stage train failed: InputError: bad"
    assert user_message(RuntimeError("the trainer failed (exit 1)")) is None  # a crash
