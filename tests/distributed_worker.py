"""One process of tests/test_distributed.py, and the computation both sides run.

`python -m tests.distributed_worker PORT PROCESS_ID OUT` joins a 2-process JAX cluster on
localhost (CPU collectives: gloo), each process with 4 simulated devices, and runs `run` on a
(2, 2, 2) mesh spanning both; process 0 writes the gathered results to OUT (.npz).
"""
import os
import sys

import numpy as np


def run(mesh) -> dict[str, np.ndarray]:
    """The tiny Omni-Emotion's sharded forward and one phase-3 train step on `mesh`: logits, the
    step's loss and the updated trainable parameters, gathered to every process."""
    import jax
    from flax import traverse_util
    from jax.experimental import multihost_utils

    from configs import omni_emotion as omni_configs
    from omni_jax.train.step import make_trainer, merge_params
    from tests.models.test_omni_emotion import tiny_model
    from tests.test_sharding import omni_batch

    cfg, model, host_params = tiny_model()
    host_batch = omni_batch(cfg)
    trainer = make_trainer(cfg, mesh, omni_configs.get_config("tiny").train, total_steps=10)
    # Every process holds the same host values; each places only its own devices' shards.
    place = lambda x, sharding: jax.make_array_from_callback(np.shape(x), sharding, lambda index: np.asarray(x)[index])
    shardings = jax.tree.map(lambda s: s.sharding, merge_params(trainer.abstract_state["trainable"],
                                                                trainer.abstract_frozen))
    params = jax.tree.map(place, host_params, shardings)
    batch = {k: place(v, trainer.batch_sharding) for k, v in host_batch.items()}
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with trainer.activate():
        logits = jax.jit(lambda p, x: model.apply({"params": p}, **x)["logits"],
                         out_shardings=trainer.batch_sharding)(params, inputs)
        state, frozen = trainer.init_state(params)
        state, metrics = trainer.step(state, frozen, batch)
    gather = lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return {"logits": gather(logits), "loss": gather(metrics["loss"]), "tokens": gather(metrics["tokens"]),
            **{"params/" + path: gather(leaf)
               for path, leaf in traverse_util.flatten_dict(state["trainable"], sep="/").items()}}


def main(port: int, process_id: int, out: str) -> None:
    # (the collective timeouts as tests/conftest.py sets them: 2 cores for 8 simulated devices)
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4 " + " ".join(
        f for f in os.environ.get("XLA_FLAGS", "").split() if f.startswith("--xla_cpu_collective"))
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
    assert jax.process_count() == 2 and jax.local_device_count() == 4 and jax.device_count() == 8

    from omni_jax.sharding import make_mesh

    results = run(make_mesh(2, 2, 2))
    if jax.process_index() == 0:
        np.savez(out, **results)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
