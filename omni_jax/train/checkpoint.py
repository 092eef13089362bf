"""Training checkpoints: orbax's CheckpointManager holding the train state and the data
iterator together (one step, one checkpoint), as MaxText's checkpointing does.

A checkpoint holds what the run changes, not the frozen parameters (the 8 B of phases 1 and 2
never move): `state` (step, non-finite count, the trainable parameters, the optimizer state),
restored into the current run's shardings (any mesh, any device count), and `data` (each
process's input-pipeline state, grain's checkpoint handler: one file per process). The frozen
parameters come from the base checkpoint the workdir's config.json names.

Saves are asynchronous: `save` returns once the arrays are copied to the host and the data
state is written; orbax writes to a temporary folder and renames it when every process has
finished, so a half-written checkpoint (a kill, a full disk) is never restored and the
previous ones stay. The latest `keep` are kept, plus every `keep_every`-th for good.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import grain
import orbax.checkpoint as ocp

from omni_jax.errors import RunStopped


class CheckpointError(RunStopped):
    """A save failed (a full disk, a lost mount): the checkpoints committed before it stand."""


class Checkpoints:
    def __init__(self, directory: Path, keep: int, keep_every: int = 0):
        # cleanup_tmp_directories: a rerun removes what a failed or killed save left half-written.
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, keep_period=keep_every or None, create=True,
                                               enable_async_checkpointing=True, cleanup_tmp_directories=True)
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: dict[str, Any], data: grain.DatasetIterator) -> None:
        """Starts saving `state` (device arrays) and `data`'s position as checkpoint `step`;
        raises the error of an earlier save that failed in the background."""
        with self._failures(f"saving checkpoint {step}"):
            self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                            data=grain.checkpoint.CheckpointSave(data)), force=True)

    def restore(self, step: int, abstract_state: dict[str, Any],
                data: grain.DatasetIterator | None = None) -> dict[str, Any]:
        """The state of checkpoint `step`, placed as `abstract_state`'s shardings say; `data`
        (if given) is set to the position saved with it."""
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data)
        return self.manager.restore(step, args=ocp.args.Composite(**items))["state"]

    def wait(self) -> None:
        """Blocks until every started save is committed (raises if one failed)."""
        with self._failures("finishing the last checkpoint"):
            self.manager.wait_until_finished()

    @contextlib.contextmanager
    def _failures(self, doing: str) -> Iterator[None]:
        """An error of orbax (this save's, or an earlier one's raised now) as a CheckpointError
        naming the checkpoint a rerun resumes from."""
        try:
            yield
        except (OSError, ValueError, RuntimeError) as error:
            committed = sorted(int(p.name) for p in self.directory.iterdir()
                               if p.name.isdigit() and (p / "commit_success.txt").exists())
            raise CheckpointError(
                f"{doing} in {self.directory} failed ({type(error).__name__}: {str(error)[:300]}); the committed "
                f"checkpoints {committed or 'none'} are intact: free space (or fix the folder) and rerun the same "
                "command to resume") from error

    def close(self) -> None:
        self.manager.close()
