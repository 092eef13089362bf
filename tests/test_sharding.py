"""Sharded equals unsharded on meshes of the 8 simulated devices: LLaVA-OneVision restored
straight onto each mesh; a checkpoint saved from one mesh restores onto another. (The whole
Omni-Emotion model's loss and gradients sharded: tests/train/test_step.py, through the train
step itself.)"""
import dataclasses
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

import omni_jax
from omni_jax import registry
from omni_jax.checkpoint_dir import save_params
from omni_jax.errors import InputError
from omni_jax.sharding import LOGICAL_AXIS_RULES, dcn_granules, fit_spec, make_mesh, param_shardings, stored_layout
from tests.conftest import on_first_device, rel_err
from tests.models.test_llava_onevision import video_inputs

MESHES = [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 2, 4)]


def _batch_sharding(mesh):
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))


@pytest.fixture(scope="module")
def unsharded(llava):
    hf, root = llava
    model, params = omni_jax.load_pretrained(root / "ox")
    ids, pixels = video_inputs(hf, model.config, batch=8, seed=5)
    logits = model.apply({"params": params}, input_ids=jnp.asarray(ids), pixel_values_videos=jnp.asarray(pixels))
    return ids, pixels, np.asarray(logits["logits"])


@pytest.mark.parametrize("data,fsdp,tensor", MESHES)
def test_sharded_forward_equals_unsharded(llava, unsharded, data, fsdp, tensor):
    _, root = llava
    ids, pixels, expected = unsharded
    mesh = make_mesh(data, fsdp, tensor)
    model, params = omni_jax.load_pretrained(root / "ox", mesh=mesh)
    if data == 1:  # fsdp and tensor split the parameters; data alone replicates them
        assert on_first_device(params) < sum(x.size for x in jax.tree.leaves(params)) / 2
    batch = _batch_sharding(mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
        forward = jax.jit(lambda p, i, v: model.apply({"params": p}, input_ids=i, pixel_values_videos=v)["logits"])
        logits = forward(params, jax.device_put(ids, batch), jax.device_put(pixels, batch))
    assert rel_err(logits, expected) < 1e-5


def test_checkpoint_saved_on_one_mesh_restores_on_another(llava, tmp_path):
    """Parameters sharded fsdp=8 are written shard by shard and restored onto tensor=4 × fsdp=2."""
    _, root = llava
    source_mesh, target_mesh = make_mesh(1, 8, 1), make_mesh(1, 2, 4)
    model, params = omni_jax.load_pretrained(root / "ox", mesh=source_mesh)
    family = registry.FAMILIES["llava_onevision"]
    save_params(tmp_path / "saved", family.model_type, model.config, params)
    _, restored = omni_jax.load_pretrained(tmp_path / "saved", mesh=target_mesh)
    expected = param_shardings(registry.abstract_params(family, model.config, boxed=True), target_mesh)
    for a, b, sharding in zip(jax.tree.leaves(params), jax.tree.leaves(restored), jax.tree.leaves(expected)):
        assert b.sharding == sharding
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any(s.spec != a.sharding.spec for s, a in zip(jax.tree.leaves(expected), jax.tree.leaves(params)))


def test_fresh_parameters_are_created_in_their_shards(llava):
    """`init_params` on fsdp=2 x tensor=4 equals the same init on one device, already split."""
    _, root = llava
    model, _ = omni_jax.load_pretrained(root / "ox")
    family = registry.FAMILIES["llava_onevision"]
    mesh = make_mesh(1, 2, 4)
    sharded = registry.init_params(family, model.config, mesh, seed=3)
    single = registry.init_params(family, model.config, make_mesh(1, 1, 1, devices=jax.devices()[:1]), seed=3)
    expected = param_shardings(registry.abstract_params(family, model.config, boxed=True), mesh)
    assert on_first_device(sharded) < sum(x.size for x in jax.tree.leaves(sharded)) / 2
    for a, b, sharding in zip(jax.tree.leaves(sharded), jax.tree.leaves(single), jax.tree.leaves(expected)):
        assert a.sharding == sharding
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _mesh(data=1, fsdp=1, tensor=1):
    return AbstractMesh((data, fsdp, tensor), ("data", "fsdp", "tensor"))


@pytest.mark.parametrize("spec,shape,mesh,fixed,expected", [
    # 4 KV heads on tensor=8: tensor moves to head_dim, the whole dimension it divides
    (P("fsdp", "tensor", None), (3584, 4, 128), _mesh(fsdp=2, tensor=8), (), P("fsdp", None, "tensor")),
    # two names on one dimension: the subset that divides it (tensor) stays, fsdp moves on
    (P(("fsdp", "tensor"), None), (6, 64), _mesh(fsdp=4, tensor=2), (), P("tensor", "fsdp")),
    # the scanned layers never take an axis (a scan slicing them would gather them whole)
    (P(None, "fsdp"), (16, 3), _mesh(fsdp=8), (True, False), P(None, None)),
    (P(None, "fsdp"), (16, 3), _mesh(fsdp=8), (), P("fsdp", None)),
    # SigLIP's 1152 × 4304 MLP kernel on fsdp=256: nothing divides (padding is stored_layout's)
    (P(None, "fsdp", "tensor"), (26, 1152, 4304), _mesh(fsdp=256), (True,), P(None, None, "tensor")),
])
def test_a_dimension_its_axes_do_not_divide_passes_them_on(spec, shape, mesh, fixed, expected):
    assert fit_spec(spec, shape, mesh, fixed) == expected


def test_frozen_leaves_are_stored_padded_when_nothing_else_splits_them():
    fsdp256 = _mesh(fsdp=256)
    assert stored_layout(P(None, "fsdp", "tensor"), (26, 1152, 4304), fsdp256, (True,)) == (
        (26, 1280, 4304), P(None, "fsdp", "tensor"))
    # split by another dimension: no padding; padding 3 → 256 rows: kept whole
    assert stored_layout(P("fsdp", None), (1152, 3584), fsdp256) == ((1152, 3584), P(None, "fsdp"))
    assert stored_layout(P("fsdp", None), (3, 5), fsdp256) == ((3, 5), P(None, None))


# Meshes on the hardware: fake devices with the attributes mesh_utils reads, as JAX's own
# tests/mesh_utils_test.py builds them (hosts of 2 × 2 chips, listed host by host).
@dataclasses.dataclass(frozen=True)
class FakeDevice:
    id: int
    process_index: int
    platform: str
    device_kind: str
    coords: tuple[int, ...] = (0, 0, 0)
    core_on_chip: int = 0
    slice_index: int = 0


def tpu_slices(x, y, z, kind, slices=1):
    """jax.devices() of `slices` TPU slices of x × y × z chips, one device per chip."""
    devices = []
    for s in range(slices):
        for zp, yp, xp in itertools.product(range(z), range(y // 2), range(x // 2)):
            for yd, xd in itertools.product(range(2), range(2)):
                process = s * (x // 2) * (y // 2) * z + (zp * (y // 2) + yp) * (x // 2) + xp
                devices.append(FakeDevice(len(devices), process, "tpu", kind, (2 * xp + xd, 2 * yp + yd, zp),
                                          slice_index=s))
    return devices


def gpu_nodes(nodes, per_node=8):
    return [FakeDevice(i, i // per_node, "gpu", "NVIDIA H100 80GB HBM3") for i in range(nodes * per_node)]


def _coords(mesh):
    return np.array([d.coords for d in mesh.devices.flat]).reshape(mesh.devices.shape + (3,))


def _is_ring_along_one_side(coords, side):
    """`coords` [n, 3] walk one side of the torus, 0, 1, ..., side - 1, the others fixed."""
    moving = [d for d in range(3) if len(set(coords[:, d])) > 1]
    return len(moving) == 1 and list(coords[:, moving[0]]) == list(range(side))


def _each_device_once(mesh, devices):
    return sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in devices)


@pytest.mark.parametrize("data,fsdp,tensor", MESHES + [(1, -1, 1)])
def test_cpu_meshes_are_the_device_list_reshaped(data, fsdp, tensor):
    """mesh_utils keeps CPU devices in the order given: the mesh every CPU run had before."""
    expected = np.asarray(jax.devices()).reshape(data, 8 // (data * tensor) if fsdp == -1 else fsdp, tensor)
    assert (make_mesh(data, fsdp, tensor).devices == expected).all()
    reversed_devices = jax.devices()[::-1]
    assert list(make_mesh(data, fsdp, tensor, devices=reversed_devices).devices.flat) == reversed_devices


@pytest.mark.parametrize("kind", ["TPU v4", "TPU v5p"])
def test_3d_torus_tensor_rings_run_along_one_side(kind):
    """A v5p-128 (4 × 4 × 4 chips): each tensor group of 4 is one whole side of the torus, each
    fsdp group of 16 the square of the two other sides. Devices in jax.devices() order (what
    the mesh was before) put a host's 2 × 2 chips on the tensor axis instead."""
    devices = tpu_slices(4, 4, 4, kind)
    mesh = make_mesh(1, 16, 4, devices=devices)
    coords = _coords(mesh)[0]  # [fsdp, tensor, xyz]
    assert _each_device_once(mesh, devices)
    assert all(_is_ring_along_one_side(coords[f], 4) for f in range(16))
    side = next(d for d in range(3) if len(set(coords[0, :, d])) > 1)
    for t in range(4):  # the fsdp group: the other two sides, 4 × 4, this side fixed
        assert len(set(coords[:, t, side])) == 1 and len({tuple(c) for c in coords[:, t]}) == 16
    in_order = np.array([d.coords for d in devices]).reshape(16, 4, 3)
    assert not any(_is_ring_along_one_side(in_order[f], 4) for f in range(16))
    assert dict(make_mesh(devices=devices).shape) == {"data": 1, "fsdp": 64, "tensor": 1}


@pytest.mark.parametrize("kind", ["TPU v5 lite", "TPU v6 lite"])
def test_2d_torus_axes_take_one_side_each(kind):
    """v5e-256 / v6e-256 (16 × 16): tensor=16 one side, fsdp=16 the other; a 4 × 4 slice's
    fsdp=16 is a ring of neighbours, the last next to the first."""
    devices = tpu_slices(16, 16, 1, kind)
    mesh = make_mesh(1, 16, 16, devices=devices)
    coords = _coords(mesh)[0]
    assert _each_device_once(mesh, devices)
    assert all(_is_ring_along_one_side(coords[f], 16) for f in range(16))
    assert all(_is_ring_along_one_side(coords[:, t], 16) for t in range(16))
    ring = _coords(make_mesh(1, -1, 1, devices=tpu_slices(4, 4, 1, kind)))[0, :, 0]
    steps = np.abs(ring - np.roll(ring, 1, axis=0)).sum(-1)
    assert list(steps) == [1] * 16 and len({tuple(c) for c in ring}) == 16


def test_a_size_no_product_of_the_torus_sides_needs_split_physical_axes():
    """data=2, fsdp=64, tensor=2 on 16 × 16: 2 is no product of the sides, so refused unless
    allowed; allowed, the tensor pairs are still neighbours."""
    devices = tpu_slices(16, 16, 1, "TPU v5 lite")
    with pytest.raises(InputError, match=r"16 × 16 × 1 torus.*allow_split_physical_axes=True"):
        make_mesh(2, 64, 2, devices=devices)
    mesh = make_mesh(2, 64, 2, devices=devices, allow_split_physical_axes=True)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 64, "tensor": 2} and _each_device_once(mesh, devices)
    coords = _coords(mesh)
    assert (np.abs(coords[:, :, 0] - coords[:, :, 1]).sum(-1) == 1).all()


@pytest.mark.parametrize("dcn,shape", [((2, 1, 1), (2, 256, 1)), ((1, 2, 1), (1, 512, 1))])
def test_two_v5e_slices_split_the_dcn_axis_by_slice(dcn, shape):
    """2 × v5e-256: the DCN axis's halves are the slices, each laid out as one slice alone."""
    devices = tpu_slices(16, 16, 1, "TPU v5 lite", slices=2)
    mesh = make_mesh(1, -1, 1, devices=devices, dcn_data=dcn[0], dcn_fsdp=dcn[1])
    assert mesh.devices.shape == shape and _each_device_once(mesh, devices)
    slices = np.vectorize(lambda d: d.slice_index)(mesh.devices)
    assert (slices == dcn_granules(shape, dcn)).all()
    alone = make_mesh(1, -1, 1, devices=[d for d in devices if d.slice_index == 1]).devices.reshape(-1)
    assert list(mesh.devices.reshape(-1)[256:]) == list(alone)


def test_gpu_nodes_are_the_dcn_granules():
    """4 nodes of 8 GPUs (a process each): dcn_data=4 gives each node a row, dcn_fsdp=4 a run of
    8 fsdp positions; without DCN the 32 GPUs form one axis, by id."""
    devices = gpu_nodes(4)
    by_rows = make_mesh(1, 8, 1, devices=devices, dcn_data=4)
    assert (np.vectorize(lambda d: d.process_index)(by_rows.devices)[..., 0] == np.arange(4)[:, None]).all()
    runs = make_mesh(1, -1, 1, devices=devices[::-1], dcn_fsdp=4)
    nodes = np.vectorize(lambda d: d.process_index)(runs.devices)
    assert runs.devices.shape == (1, 32, 1) and (nodes == dcn_granules((1, 32, 1), (1, 4, 1))).all()
    assert [d.id for d in make_mesh(devices=devices[::-1]).devices.flat] == list(range(32))


def test_tpu_devices_that_fill_no_cuboid_keep_their_order():
    devices = tpu_slices(4, 4, 4, "TPU v4")[:12]  # 3 hosts: an L of chips
    assert list(make_mesh(1, -1, 1, devices=devices).devices.flat) == devices


@pytest.mark.parametrize("devices,kwargs,message", [
    ("gpu", dict(dcn_data=-1), r"mesh.dcn_data must be a whole number ≥ 1 .*got -1"),
    ("cpu", dict(fsdp=0), r"mesh.fsdp must be a whole number ≥ 1 or -1 \(the remaining devices\), got 0"),
    ("cpu", dict(data=-1, fsdp=-1), "at most one of data, fsdp, tensor may be -1"),
    ("cpu", dict(data=3, fsdp=1), "needs 3 devices, found 8"),
    ("cpu", dict(data=3, fsdp=-1), "needs a multiple of 3 devices, found 8"),
    ("gpu", dict(fsdp=16, dcn_data=4), r"needs 16 devices per process \(32 in 4 processes\), found 8"),
    ("gpu", dict(dcn_data=2), "= 2 × 1 × 1 = 2, but the 32 devices are in 4 processes"),
    ("tpu2", dict(), "= 1 × 1 × 1 = 1, but the 512 devices are in 2 slices"),
    ("tpu2", dict(dcn_tensor=3), "= 1 × 1 × 3 = 3, but the 512 devices are in 2 slices"),
])
def test_mesh_mistakes_name_the_field(devices, kwargs, message):
    pool = {"cpu": jax.devices(), "gpu": gpu_nodes(4), "tpu2": tpu_slices(16, 16, 1, "TPU v5 lite", slices=2)}
    with pytest.raises(InputError, match=message):
        make_mesh(**kwargs, devices=pool[devices])
