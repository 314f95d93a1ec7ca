"""Run folders: their layout and files (`folder`), their lock (`lock`), and the `runs` table (`summary`)."""

from visiontune.runs.folder import RunExistsError, RunFolder, find_run, find_runs

__all__ = ["RunExistsError", "RunFolder", "find_run", "find_runs"]
