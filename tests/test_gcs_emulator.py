"""The GCS emulator fixture: `gs://` paths through etils.epath (gcsfs) and Orbax (tensorstore)."""

import numpy as np
import orbax.checkpoint as ocp
from etils import epath


def test_epath_writes_lists_and_reads_back_on_the_bucket(jaxforge_gcs_bucket):
    run = epath.Path(jaxforge_gcs_bucket) / "run"
    (run / "a" / "b.txt").write_text("hello")
    assert (run / "a" / "b.txt").read_text() == "hello"
    assert [p.name for p in run.iterdir()] == ["a"] and (run / "a").is_dir()


def test_orbax_saves_and_restores_on_the_bucket(jaxforge_gcs_bucket):
    options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
    with ocp.CheckpointManager(f"{jaxforge_gcs_bucket}/ckpt", options=options) as manager:
        for step in (1, 2):
            manager.save(step, args=ocp.args.StandardSave({"w": np.arange(4.0) * step}))
        manager.wait_until_finished()
        assert manager.all_steps() == [2]  # Step 1 cleaned up on the bucket.
        restored = manager.restore(2, args=ocp.args.StandardRestore({"w": np.zeros(4)}))
    np.testing.assert_array_equal(restored["w"], np.arange(4.0) * 2)


def test_each_test_gets_a_new_empty_bucket(jaxforge_gcs_bucket):
    assert list(epath.Path(jaxforge_gcs_bucket).iterdir()) == []
