"""`RunFolder`: what --overwrite may remove, and the layouts it reads back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from visiontune.config import DataConfig, FinetuneConfig, RunConfig
from visiontune.runs.folder import RUN_FORMAT, RunExistsError, RunFolder


def finished_run(path: Path) -> RunFolder:
    """A run folder as train leaves it (the files that matter here), with run.json marked as ours."""
    run = RunFolder(path)
    path.mkdir(parents=True)
    run.write_config(RunConfig(DataConfig(source="photos"), finetune=FinetuneConfig(epochs=2)))
    run.write_info({"started": "2026-12-01T10:00:00"})
    run.write_results({"metrics": {"valid_accuracy": 0.9}})
    run.checkpoints_dir.mkdir()
    run.checkpoint("last").write_bytes(b"weights")
    (run.bundle_dir).mkdir()
    (run.bundle_dir / "bundle.json").write_text("{}")
    (path / ".metrics.csv.abc123.tmp").write_text("left by a kill mid-write")
    return run


def test_overwrite_removes_exactly_what_a_run_wrote(tmp_path: Path) -> None:
    run = finished_run(tmp_path / "run")
    with pytest.raises(RunExistsError, match="--resume"):
        run.claim(overwrite=False)
    run.claim(overwrite=True)
    assert list(run.path.iterdir()) == []


def test_a_folder_with_anything_else_in_it_is_never_cleared(tmp_path: Path) -> None:
    run = finished_run(tmp_path / "run")
    (run.path / "THESIS.md").write_text("years of work")
    (run.path / "src").mkdir()
    before = sorted(p.relative_to(run.path) for p in run.path.rglob("*"))
    for overwrite in (False, True):
        with pytest.raises(RunExistsError, match=r"did not write \(THESIS\.md, src\); .*nothing was deleted"):
            run.claim(overwrite=overwrite)
    assert sorted(p.relative_to(run.path) for p in run.path.rglob("*")) == before


def test_a_config_yaml_alone_does_not_make_a_folder_a_run(tmp_path: Path) -> None:
    """A project folder holding its own config.yaml (and a run.json we did not write) is refused, kept whole."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.yaml").write_text("model: mine\n")
    (project / "run.json").write_text(json.dumps({"name": "someone else's"}))
    with pytest.raises(RunExistsError, match="not written by visiontune"):
        RunFolder(project).claim(overwrite=True)
    assert sorted(p.name for p in project.iterdir()) == ["config.yaml", "run.json"]


def test_an_empty_or_missing_folder_is_used_and_a_file_is_refused(tmp_path: Path) -> None:
    RunFolder(tmp_path / "missing").claim(overwrite=False)
    (tmp_path / "empty").mkdir()
    RunFolder(tmp_path / "empty").claim(overwrite=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunExistsError, match="is a file"):
        RunFolder(tmp_path / "file").check_target()


def test_run_json_is_marked_and_fields_are_added_not_replaced(tmp_path: Path) -> None:
    run = finished_run(tmp_path / "run")
    run.update_info({"balance": "weights"})
    info = run.info()
    assert info["format"] == RUN_FORMAT and info["started"] == "2026-12-01T10:00:00" and info["balance"] == "weights"
    assert run.config().finetune.epochs == 2


def test_split_files_are_found_again_under_a_moved_data_folder(tmp_path: Path) -> None:
    run = finished_run(tmp_path / "run")
    old, new = tmp_path / "old-data", tmp_path / "new-data"
    run.write_splits([(str(old / "cat" / "a.png"), "cat", "test"), (str(old / "dog" / "b.png"), "dog", "train")])
    (new / "cat").mkdir(parents=True)
    (new / "cat" / "a.png").write_bytes(b"png")
    assert run.relative_splits(old) == [("cat/a.png", "cat", "test"), ("dog/b.png", "dog", "train")]
    assert run.split_files("test", data_root=old, data=new) == [(new / "cat" / "a.png", "cat")]
    assert run.split_files("train", data_root=old, data=new) == [(None, "dog")]  # gone: reported, not guessed
