"""`jaxforge doctor` in one process: versions, devices, the mesh a config gets, and the comparison
that flags processes which differ (the multi-process runs are in test_multiprocess.py)."""


from framework import cli, doctor


def test_doctor_prints_versions_devices_and_the_mesh_of_a_config(capsys):
    assert cli.main(["doctor", "--config", "experiments/digits_cnn.py",
                     "--config.mesh.fsdp=2"]) == 0
    text = capsys.readouterr().out
    for key in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint"):
        assert f"\n{key}: " in "\n" + text
    assert "backend: cpu" in text and "devices: 8 local, 8 global" in text
    assert "{'data': 4, 'fsdp': 2, 'model': 1} over 8 devices" in text


def test_doctor_names_a_mesh_that_does_not_fit(capsys):
    assert cli.main(["doctor", "--config", "experiments/digits_cnn.py",
                     "--config.mesh.data=16"]) == 2
    assert "needs 16 devices but only 8 are available" in capsys.readouterr().err


def test_disagreements_name_each_field_and_process_that_differs():
    infos = [{"jax": "0.10.2", "backend": "cpu"}, {"jax": "0.10.2", "backend": "cpu"},
             {"jax": "0.9.0", "backend": "cpu"}]
    assert doctor.disagreements(infos) == [
        "jax: process 0 has '0.10.2', process 2 has '0.9.0'"]
    assert doctor.disagreements(infos[:2]) == []
