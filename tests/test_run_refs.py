"""Run references: numeric-looking hash prefixes stay strings; an ambiguous prefix is refused with a list."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from mlflow.tracking import MlflowClient

from synthmed.config import CONF_DIR
from synthmed.tracking import mlflow_utils as mt
from synthmed.tracking import tags as tk
from synthmed.tracking.refs import as_typed, run_ref


def _store(run_root) -> MlflowClient:
    return MlflowClient(f"sqlite:///{run_root}/mlflow.db")


def _run(client, full_hash: str, status: str = "FINISHED") -> str:
    exp = client.get_experiment_by_name("refs") or client.get_experiment(client.create_experiment("refs"))
    run = client.create_run(exp.experiment_id, tags={tk.CONFIG_HASH: full_hash}, run_name=f"ddpm-x-{full_hash[:8]}")
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


@pytest.mark.parametrize("typed,hydra_type", [("1234e5", float), ("000123", str), ("1e10", float), ("123456", int)])
def test_numeric_looking_prefix_reaches_find_run_as_typed(tmp_path, typed, hydra_type):
    """Hydra types `run=1234e5` as the float 123400000.0; the reference is read back as the user typed it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("sample", overrides=[f"run={typed}", f"paths.root={tmp_path}"], return_hydra_config=True)
    assert type(cfg.run) is hydra_type  # the premise, per case: what Hydra's grammar made of the text
    HydraConfig.instance().set_config(cfg)
    try:
        assert run_ref(cfg, "run") == typed
    finally:  # HydraConfig is a process-wide singleton: later tests must not read these overrides
        HydraConfig.instance().cfg = None
        GlobalHydra.instance().clear()


def test_as_typed_reads_the_last_override_and_strips_quotes():
    assert as_typed("run", 123400000.0, ["seed=1", "run=1234e5"]) == "1234e5"
    assert as_typed("run", 0, ["+run='000123'", "++run=\"0001234\""]) == "0001234"
    assert as_typed("run", "abc", ["runs=1e5"]) == "abc"  # another key; not given -> the composed value


def test_numeric_hash_prefix_finds_its_run(run_root):
    client = _store(run_root)
    run_id = _run(client, "1234e5" + "a" * 58)
    _run(client, "1234f6" + "b" * 58)
    assert mt.find_run(client, "1234e5").info.run_id == run_id


def test_ambiguous_prefix_lists_the_configurations(run_root):
    client = _store(run_root)
    a, b = "abcdef01" + "0" * 56, "abcdef02" + "0" * 56
    _run(client, a), _run(client, b, "KILLED")
    with pytest.raises(LookupError, match=r"matches 2 configurations") as err:
        mt.find_run(client, "abcdef")
    assert "abcdef010000" in str(err.value) and "abcdef020000" in str(err.value)
    assert "longer prefix" in str(err.value)
    assert mt.find_run(client, "abcdef02").data.tags[tk.CONFIG_HASH] == b


def test_one_configuration_several_runs_takes_the_finished_one(run_root):
    client = _store(run_root)
    full = "cafe01" + "1" * 58
    finished = _run(client, full)
    _run(client, full, "FAILED")  # newer, but failed
    assert mt.find_run(client, "cafe01").info.run_id == finished
    assert mt.find_run(client, "cafe01", prefer_finished=False).info.run_id != finished
