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

from pathlib import Path
from typing import Any

import grain
import orbax.checkpoint as ocp


class Checkpoints:
    def __init__(self, directory: Path, keep: int, keep_every: int = 0):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, keep_period=keep_every or None, create=True,
                                               enable_async_checkpointing=True)
        self.manager = ocp.CheckpointManager(Path(directory).absolute(), options=options,
                                             item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: dict[str, Any], data: grain.DatasetIterator) -> None:
        """Starts saving `state` (device arrays) and `data`'s position as checkpoint `step`;
        raises the error of an earlier save that failed in the background."""
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
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
