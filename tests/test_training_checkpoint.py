"""Per-epoch training state: saved and restored exactly, from a relative folder too, newest kept, settings checked."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from axjax.errors import AxjaxError
from axjax.methods.training_checkpoint import EpochCheckpoint


def test_state_round_trips_from_a_relative_folder_and_only_the_newest_is_kept(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  params = {"w": jnp.arange(6, dtype=jnp.float32).reshape(2, 3)}
  state = (params, optax.adamw(0.1).init(params))
  checkpoint = EpochCheckpoint("runs/training/ReFT-r1", steps_per_epoch=4, settings={"lr": 0.1})
  assert checkpoint.restore(state) is None
  assert [checkpoint.epoch_ends(s) for s in range(8)] == [False, False, False, True] * 2
  record = {"loss": np.array([[1.0, 2.0], [np.nan, 3.0]], np.float32)}
  checkpoint.save(4, state, record)
  later = (jax_tree_add(params, 1.0), state[1])
  checkpoint.save(8, later, {"loss": np.concatenate([record["loss"]] * 2)})
  assert sorted(p.name for p in (tmp_path / "runs/training/ReFT-r1").iterdir()) == ["step-8"]
  step, restored, restored_record = checkpoint.restore(state)
  assert step == 8
  np.testing.assert_array_equal(np.asarray(restored[0]["w"]), np.asarray(later[0]["w"]))
  assert type(restored[1]) is type(state[1])  # the optimizer state's structure comes back as it was
  np.testing.assert_array_equal(restored_record["loss"], np.concatenate([record["loss"]] * 2))
  with pytest.raises(AxjaxError, match="holds training state saved with other settings"):
    EpochCheckpoint("runs/training/ReFT-r1", 4, {"lr": 0.2}).restore(state)


def jax_tree_add(tree, value):
  return {k: v + value for k, v in tree.items()}
