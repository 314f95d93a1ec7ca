"""The CLI as a user runs it: a real subprocess, exit codes, and one-line errors without tracebacks."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch

from tests.conftest import write_class_folders, write_labels_csv

REPO = Path(__file__).resolve().parents[2]


def visiontune(
    *args: str, cwd: Path | None = None, columns: int = 200, process: bool = False
) -> subprocess.CompletedProcess[str]:
    """`visiontune ARGS` as a user runs it: exit code, stdout and stderr.

    In this process by default (the entry point `run()` with argv, streams, COLUMNS and the working
    folder set as a fresh process would have them, and restored after), which saves each call the
    2-4 s a new Python process spends importing torch; `process=True` for a real subprocess, where
    the test is about the process itself (its console, signals, imports, exit).
    """
    if process:
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "COLUMNS": str(columns)}
        return subprocess.run(
            [sys.executable, "-m", "visiontune", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
        )
    return _in_process(list(args), cwd=cwd, columns=columns)


def _in_process(args: list[str], *, cwd: Path | None, columns: int) -> subprocess.CompletedProcess[str]:
    from visiontune.cli.main import run

    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    saved = (sys.argv, os.getcwd(), os.environ.get("COLUMNS"), root.handlers[:], root.level, torch.get_num_threads())
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    sys.argv, os.environ["COLUMNS"], code = ["visiontune", *args], str(columns), 0
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                run()
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            except Exception:  # what a real process would print and exit 1 with
                err.write(traceback.format_exc())
                code = 1
    finally:
        sys.argv, folder, columns_before, root.handlers[:], level, threads = saved
        os.chdir(folder)
        root.setLevel(level)
        torch.set_num_threads(threads)
        if columns_before is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns_before
        for number, handler in handlers.items():
            signal.signal(number, handler)
    return subprocess.CompletedProcess(["visiontune", *args], code, out.getvalue(), err.getvalue())


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error:"), proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr


def test_version_and_help() -> None:
    assert visiontune("--version", process=True).stdout.startswith("visiontune ")  # the installed entry point
    helptext = visiontune("--help").stdout
    for command in ("datasets", "inspect", "train", "models"):
        assert command in helptext


def test_export_then_inspect(tmp_path: Path) -> None:
    proc = visiontune("datasets", "export", "fashion-mnist", str(tmp_path / "demo"))
    assert proc.returncode == 0, proc.stderr
    assert "wrote 4000 images" in proc.stdout
    proc = visiontune("inspect", str(tmp_path / "demo"), "--out", str(tmp_path / "report"))
    assert proc.returncode == 0, proc.stderr
    assert "4000 usable images" in proc.stdout
    report = json.loads((tmp_path / "report" / "inspect.json").read_text())
    assert report["ok"] and report["counts"]["test"]["sneaker"] == 100
    assert sorted(report["grids"]) == ["test", "train", "valid"]


def test_export_refusal_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.txt").write_text("x")
    assert_one_line_error(visiontune("datasets", "export", "fashion-mnist", str(tmp_path / "mine")), "--overwrite")


def test_inspect_unusable_data_exits_3(tmp_path: Path, fashion: dict) -> None:
    write_class_folders(tmp_path / "d", fashion, classes=(4,), per_class=5)
    proc = visiontune("inspect", str(tmp_path / "d"), "--out", str(tmp_path / "r"))
    assert proc.returncode == 3
    assert "NOT usable" in proc.stdout and "coat" in proc.stdout


def test_inspect_missing_folder_is_one_line(tmp_path: Path) -> None:
    assert_one_line_error(visiontune("inspect", str(tmp_path / "nope")), "no such folder")


def test_inspect_names_a_symlink_loop_and_counts_each_image_once(class_folder: Path, tmp_path: Path) -> None:
    (class_folder / "trouser" / "loop").symlink_to("..")
    proc = visiontune("inspect", str(class_folder), "--out", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stderr
    assert "30 files, 30 usable images" in proc.stdout and "trouser/loop" in proc.stdout


def test_csv_file_under_two_labels_inspect_exits_3_and_train_refuses(class_folder: Path, tmp_path: Path) -> None:
    csv_file = write_labels_csv(class_folder, "trouser/trouser_002.png,sneaker")
    proc = visiontune("inspect", str(csv_file), "--out", str(tmp_path / "r"))
    assert proc.returncode == 3, proc.stderr
    assert "NOT usable" in proc.stdout and "trouser/trouser_002.png" in proc.stdout
    train = visiontune("train", str(csv_file), "--model", "small_cnn", "--out", str(tmp_path / "run"))
    assert_one_line_error(
        train, "labels.csv", "trouser/trouser_002.png", "'sneaker' (line 32)", "remove one of the rows"
    )
    assert train.returncode == 3


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--model", "efficientnet_lit0"], ["unknown model", "efficientnet_lite0"]),
        (["--image-size", "16"], ["below", "minimum"]),
        (["--augment", "wild"], ["`augment` must be one of", "Received: augment='wild'"]),
        (["--lr", "fast"], ["--lr takes a number or 'auto'"]),
        (["--lr", "nan"], ["`lr` must be in", "Received: lr=nan"]),
        (["--rotation", "nan"], ["`rotation` must be in", "Received: rotation=nan"]),
        (["--label-smoothing", "inf"], ["`label_smoothing` must be in", "Received: label_smoothing=inf"]),
        (["--seed", "-1"], ["`seed` must be in", "Received: seed=-1"]),
    ],
)
def test_train_bad_options_are_one_line(tmp_path: Path, fashion: dict, args: list[str], fragments: list[str]) -> None:
    data = write_class_folders(tmp_path / "d", fashion, per_class=6)
    proc = visiontune("train", str(data), "--out", str(tmp_path / "run"), *args)
    assert_one_line_error(proc, *fragments)


def test_train_single_class_is_one_line(tmp_path: Path, fashion: dict) -> None:
    data = write_class_folders(tmp_path / "d", fashion, classes=(2,), per_class=6)
    assert_one_line_error(visiontune("train", str(data)), "found one class", "at least two")


def test_train_small_cnn_end_to_end_with_json_log(tmp_path: Path, fashion: dict) -> None:
    data = write_class_folders(tmp_path / "d", fashion, per_class=12)
    proc = visiontune(
        "train", str(data), "--model", "small_cnn", "--method", "scratch", "--image-size", "28", "--epochs", "1",
        "--freeze-epochs", "0", "--batch-size", "8", "--workers", "0", "--out", str(tmp_path / "run"), "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["epoch"] for r in rows] == [1] and rows[0]["phase"] == "fit"
    assert (tmp_path / "run" / "model" / "bundle.json").is_file()
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "backbone: small_cnn" in config  # --model is the old spelling of --backbone
    proc = visiontune("train", str(data), "--resume", str(tmp_path / "run"), "--epochs", "3")
    assert_one_line_error(proc, "--resume", "--epochs, DATA would be ignored")
    assert (tmp_path / "run" / "config.yaml").read_text() == config  # nothing changed


def _full_disk(*args: object, **kwargs: object) -> None:
    """What safetensors' Rust writer raises on ENOSPC."""
    from safetensors import SafetensorError

    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


def inject_fault(monkeypatch: pytest.MonkeyPatch, fail: str, *, read_only: Path | None = None) -> None:
    """What finds the disk full: a checkpoint after the first, the bundle, or results.json; or a read-only folder."""
    import tempfile

    import visiontune.bundle as bundle
    import visiontune.training.checkpoint as checkpoint

    if fail == "checkpoint":
        real_save_file, saved = checkpoint.save_file, []

        def second_checkpoint_fails(tensors: object, path: str, metadata: object = None) -> None:
            saved.append(path)
            if len(saved) > 2:  # epoch 1 wrote best and last; epoch 2's best finds the disk full
                _full_disk()
            real_save_file(tensors, path, metadata=metadata)

        monkeypatch.setattr(checkpoint, "save_file", second_checkpoint_fails)
    elif fail == "bundle":
        monkeypatch.setattr(bundle, "save_file", _full_disk)
    elif fail == "results":
        real_mkstemp = tempfile.mkstemp

        def results_fail(*args: object, prefix: str | None = None, **kwargs: object) -> object:
            if prefix == ".results.json.":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_mkstemp(*args, prefix=prefix, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", results_fail)
    elif fail == "read-only":  # as a read-only folder answers (root ignores chmod: simulated)
        real_mkdir = os.mkdir

        def refuse_under(path: object, *args: object, **kwargs: object) -> None:
            if str(path).startswith(str(read_only)):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", refuse_under)


@pytest.mark.parametrize(
    ("fail", "fragment"),
    [
        ("checkpoint", "disk full while writing a checkpoint (the previous one is intact)"),
        ("bundle", "model: disk full"),
        ("results", "results.json: disk full"),
    ],
)
def test_full_disk_is_one_line_and_exit_7(
    tmp_path: Path, fashion: dict, fail: str, fragment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from visiontune.training.checkpoint import load_checkpoint

    data = write_class_folders(tmp_path / "d", fashion, per_class=6)
    epochs = "2" if fail == "checkpoint" else "1"  # the bundle and results.json are written after the last epoch
    inject_fault(monkeypatch, fail)
    proc = visiontune(
        "train", str(data), "--model", "small_cnn", "--method", "scratch", "--image-size", "28", "--epochs", epochs,
        "--freeze-epochs", "0", "--workers", "0", "--out", str(tmp_path / "run"),
    )  # fmt: skip
    assert_one_line_error(proc, fragment)
    assert proc.returncode == 7
    if fail == "checkpoint":  # epoch 1's checkpoint survives, whole, and the run resumes from it
        assert "--resume" in proc.stderr
        assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors").state["epoch"] == 1
    if fail == "bundle":
        assert not (tmp_path / "run" / "model").exists()
        assert not [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".model")]  # no staging left


def test_out_in_a_read_only_folder_is_one_line(tmp_path: Path, fashion: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_class_folders(tmp_path / "d", fashion, per_class=6)
    (tmp_path / "ro").mkdir()
    inject_fault(monkeypatch, "read-only", read_only=tmp_path / "ro")
    proc = visiontune("train", str(data), "--model", "small_cnn", "--out", str(tmp_path / "ro" / "run"))
    assert_one_line_error(proc, "ro/run: can't write here (Permission denied)", "choose another output folder")
    assert proc.returncode == 7


def test_out_naming_a_file_is_one_line(tmp_path: Path, fashion: dict) -> None:
    data = write_class_folders(tmp_path / "d", fashion, per_class=6)
    (tmp_path / "notes.txt").write_text("mine")
    proc = visiontune("train", str(data), "--model", "small_cnn", "--out", str(tmp_path / "notes.txt"))
    assert_one_line_error(proc, "notes.txt is a file, not a folder")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def _train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "visiontune", "train", str(data), "--model", "small_cnn", "--method", "scratch",
            "--image-size", "28", "--freeze-epochs", "0", "--workers", "0", "--out", str(out), *extra]  # fmt: skip


def test_ctrl_c_says_it_stopped_and_how_to_resume(tmp_path: Path, fashion: dict) -> None:
    data = write_class_folders(tmp_path / "d", fashion, per_class=12)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "COLUMNS": "200"}
    out = tmp_path / "run"
    # a shell's background job inherits SIGINT ignored, and Python then installs no Ctrl-C handler: a user's
    # terminal delivers it, so the child starts with the default disposition wherever the tests were launched
    proc = subprocess.Popen(_train_args(data, out, "--epochs", "500"), stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    deadline = time.monotonic() + 120
    while not (out / "checkpoints" / "last.safetensors").is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    stopped = subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)
    assert_one_line_error(stopped, "stopped", f"visiontune train --resume {out}")
    assert proc.returncode == 130


CONCURRENT = """
import os, sys, time
import visiontune.training.pipeline  # imported before the start line: both processes begin together
from visiontune.runs.folder import RunFolder

real_clear = RunFolder.clear

def slow_clear(self):  # a big run takes a while to clear: the other process looks at the folder meanwhile
    time.sleep(1.0)
    real_clear(self)

RunFolder.clear = slow_clear
time.sleep(max(0.0, float(os.environ["START_AT"]) - time.time()))
from visiontune.cli.main import run
sys.argv = ["visiontune", *sys.argv[1:]]
run()
"""


@pytest.mark.slow
def test_two_overwrites_at_once_one_trains_the_other_gets_the_lock_message(tmp_path: Path, fashion: dict) -> None:
    data = write_class_folders(tmp_path / "d", fashion, per_class=12)
    out = tmp_path / "run"
    first = visiontune(*_train_args(data, out, "--epochs", "1")[3:])
    assert first.returncode == 0, first.stderr  # a finished run, which both will --overwrite
    (tmp_path / "both.py").write_text(CONCURRENT)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "COLUMNS": "200", "START_AT": str(time.time() + 12)}
    args = [sys.executable, str(tmp_path / "both.py"), *_train_args(data, out, "--epochs", "3", "--overwrite")[3:]]
    procs = [subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    done = [subprocess.CompletedProcess(p.args, p.wait(timeout=300), "", p.stderr.read()) for p in procs]
    codes = sorted(p.returncode for p in done)
    assert codes == [0, 1], [p.stderr for p in done]
    loser = next(p for p in done if p.returncode == 1)
    assert_one_line_error(loser, "is being written by another visiontune process")
    assert (out / "model" / "bundle.json").is_file() and json.loads((out / "results.json").read_text())["metrics"]
