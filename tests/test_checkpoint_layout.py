"""Checkpoint layouts (checkpoint/layout.py): block arrays stacked per layer, or the tree as is; both
restore bitwise, onto another sharding too (meshes of 8 devices: test_checkpoint.py's probe)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt2_jax.checkpoint import layout
from gpt2_jax.checkpoint import manager as ckpt
from gpt2_jax.model import gpt2 as model_lib
from gpt2_jax.optim import optimizers, schedules
from gpt2_jax.parallel import sharding
from gpt2_jax.train import steps as train


@pytest.fixture(scope="module")
def state():
    """A 3-block nano train state after one AdamW step (its moments no longer zeros)."""
    cfg = model_lib.config_from_preset("nano", vocab_size=257, n_layer=3)
    mesh = sharding.make_mesh(sharding.MeshSpec(ici=(1, 1, 1)), jax.devices()[:1])
    schedule = schedules.make_schedule("constant", 1e-3, 1, 0)
    steps = train.make_steps(model_lib.GPT2(cfg), optimizers.make_optimizer(lr=schedule), schedule, mesh,
                             sharding.logical_rules("fsdp+tp"), 0, 16)
    state = steps.init()
    batch = np.random.default_rng(0).integers(0, 257, (1, 8, 17)).astype(np.int32)
    return steps.train(state, batch)[0]


def _host(tree):
    return [np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
            for x in jax.tree.leaves(tree)]


def _assert_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(_host(a), _host(b)):
        np.testing.assert_array_equal(x, y)


def test_stacking_puts_each_block_array_under_h_layers_with_a_leading_unsharded_layer_axis(state):
    saved = layout.to_saved(state)
    qkv = saved["params"]["h_layers"]["attn"]["qkv_kernel"]
    per_layer = state.params["h_1"]["attn"]["qkv_kernel"]
    assert qkv.shape == (3, *per_layer.shape)
    assert qkv.sharding.spec == jax.sharding.PartitionSpec(None, *per_layer.sharding.spec)
    np.testing.assert_array_equal(np.asarray(qkv[1]), np.asarray(per_layer))
    # 12 arrays per block in params and in each Adam moment become one array per name for all 3 blocks
    assert len(jax.tree.leaves(state)) - len(jax.tree.leaves(saved)) == 3 * 12 * 2
    assert "h_0" not in saved["params"] and "wte" in saved["params"]


@pytest.mark.parametrize("stack_layers", [True, False])
def test_both_layouts_restore_bitwise_onto_another_sharding_and_params_alone(tmp_path, state, stack_layers):
    manager = ckpt.make_manager(tmp_path, max_to_keep=2, keep_best=0)
    ckpt.save(manager, 1, state, {}, {}, stack_layers=stack_layers)
    ckpt.finish(manager)
    keys = ckpt.array_keys(manager, 1)
    assert layout.is_stacked(keys) == stack_layers
    target = ckpt.abstract_like(state)  # on one device, not on the mesh it was saved from
    restored = ckpt.restore_state(manager, 1, target)
    _assert_equal(restored, state)
    assert all(r.sharding == t.sharding for r, t in zip(jax.tree.leaves(restored), jax.tree.leaves(target)))
    manager.close()
    params = ckpt.restore_params(ckpt.make_manager(tmp_path, read_only=True), 1, target.params)
    _assert_equal(params, state.params)


def test_a_stacked_step_missing_an_array_is_named_by_its_stacked_path(state):
    keys = {p for p, _ in layout.leaf_paths(layout.to_saved(state))}
    missing = ("params", "h_layers", "mlp", "fc_kernel")
    assert missing in keys
    assert layout.expected_keys(state, keys - {missing}) - (keys - {missing}) == {missing}
    assert layout.expected_keys(state, keys) == keys


def test_a_stacked_step_read_by_a_model_of_other_depth_is_a_one_line_error_naming_both_shapes(tmp_path, state):
    manager = ckpt.make_manager(tmp_path, max_to_keep=2, keep_best=0)
    ckpt.save(manager, 1, state, {}, {})
    ckpt.finish(manager)
    manager.close()
    shallower = {k: v for k, v in ckpt.abstract_like(state.params).items() if k != "h_2"}
    with pytest.raises(ckpt.CheckpointError, match=r"^cannot restore params of step 1 from .*shape: \(2, [^)]*\) is not "
                                                   r"compatible with the stored shape: \(3, "):
        ckpt.restore_params(ckpt.make_manager(tmp_path, read_only=True), 1, shallower)


def test_a_tree_with_nothing_to_stack_is_saved_and_restored_as_it_is(tmp_path):
    tree = {"params": {"h_0": {"w": jnp.arange(3.0)}, "wte": jnp.ones((2, 2))}, "opt": (jnp.zeros(2), jnp.int32(4))}
    assert layout.to_saved(tree) is tree  # one block: nothing to stack
    manager = ckpt.make_manager(tmp_path, max_to_keep=2, keep_best=0)
    ckpt.save(manager, 1, tree, {}, {})
    ckpt.finish(manager)
    assert not layout.is_stacked(ckpt.array_keys(manager, 1))
    _assert_equal(ckpt.restore_state(manager, 1, ckpt.abstract_like(tree)), tree)
    manager.close()
