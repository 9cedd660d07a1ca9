"""The `_target_` allowlist names what may be built; every dangerous callable is refused (issue 21, item 5)."""

from __future__ import annotations

import re

import pytest
import torch

from synthmed.config import DisallowedTargetError, check_targets, instantiate, iter_targets
from synthmed.targets import FACTORIES, VETTED, locate, refusal
from tests.conftest import compose_train

# Callables that download, load, compile or run code, or reach the OS: none may be a `_target_`.
DANGEROUS = [
    "torch.hub.load", "torch.hub.load_state_dict_from_url", "torch.hub.download_url_to_file", "torch.load",
    "torch.jit.load", "torch.package.PackageImporter", "torch.utils.cpp_extension.load_inline",
    "torch.utils.cpp_extension.load", "torch.utils.cpp_extension.CppExtension", "torch.ops.load_library",
    "torch.serialization.load", "torch.optim.Adam.__init__", "torch.nn.Module.load_state_dict",
    "os.system", "subprocess.Popen", "builtins.eval", "builtins.exec", "pickle.loads", "shutil.rmtree",
    "monai.apps.DecathlonDataset", "monai.apps.download_and_extract", "monai.bundle.download",
    "monai.networks.nets.MILModel", "monai.networks.nets.TorchVisionFCModel",
    "torchmetrics.image.fid.FrechetInceptionDistance", "pytorch_lightning.Trainer",
    # reached through a synthmed module's namespace: a prefix check would take these for synthmed's own
    "synthmed.train.train", "synthmed.tracking.mlflow_utils.subprocess.run",
    "synthmed.tracking.mlflow_utils.subprocess.Popen", "synthmed.config.hydra.utils.instantiate",
    "synthmed.callbacks.checkpoint.OnExceptionCheckpoint", "synthmed.targets.importlib.import_module",
    "synthmed.does_not_exist.Thing",
]


@pytest.mark.parametrize("target", DANGEROUS)
def test_dangerous_targets_are_refused(target):
    assert refusal(target) is not None
    with pytest.raises(DisallowedTargetError, match=r"'net\._target_'.*'" + re.escape(target) + "'"):
        check_targets({"net": {"_target_": target}})


def test_every_shipped_config_target_is_allowed(tmp_path):
    for overrides in ([], ["model=gan"], ["model=vae"], ["model=pix2pix", "dataset=phantom2d_pairs"],
                      ["model=ldm"], ["model=ddpm", "model/process=rflow"]):
        cfg = compose_train(tmp_path, overrides)
        assert iter_targets(cfg)
        check_targets(cfg)  # raises on the first refused key


def test_vetted_names_are_classes_of_the_named_library():
    """The list cannot rot into names that no longer exist (or silently became functions)."""
    for name in sorted(VETTED):
        if name.startswith("lightning.pytorch."):
            continue  # the unified `lightning` package is optional; its pytorch_lightning twin is checked
        obj = locate(name)
        assert isinstance(obj, type), name
        assert obj.__module__.split(".")[0] == name.split(".")[0], name


def test_factories_are_named_synthmed_functions_and_nothing_else():
    import inspect

    for name in sorted(FACTORIES):
        obj = locate(name)
        assert inspect.isfunction(obj) and obj.__module__.startswith("synthmed."), name
        assert refusal(name) is None
    assert refusal("synthmed.data.dicom_images.native_frames") is not None  # other functions stay refused


def test_synthmed_class_is_allowed_and_built():
    assert refusal("synthmed.models.noise.GaussianDiffusion") is None
    assert refusal("torch.optim.AdamW") is None
    built = instantiate({"_target_": "torch.optim.AdamW", "params": [torch.nn.Parameter(torch.zeros(1))]}, "x")
    assert isinstance(built, torch.optim.AdamW)


# --- image sizes the networks can take (item 7) ---------------------------------------------------------------

@pytest.mark.parametrize(("overrides", "bad", "multiple"), [
    (["dataset.size=50"], 50, 4),                      # ddpm: channels [32, 64, 64] -> 2 down-samplings
    (["model=gan", "dataset.size=36"], 36, 8),         # discriminator: 3 down-sampling blocks
    (["model=pix2pix", "dataset=phantom2d_pairs", "dataset.size=40"], 40, 16),  # BasicUNet: 4 poolings
])
def test_size_the_network_cannot_take_is_refused(tmp_path, overrides, bad, multiple):
    from synthmed.nets.sizes import check_image_size

    with pytest.raises(ValueError, match=rf"dataset.size={bad}.*multiple of {multiple}\b"):
        check_image_size(compose_train(tmp_path, overrides))
    ok = [o for o in overrides if not o.startswith("dataset.size")] + [f"dataset.size={bad // multiple * multiple}"]
    check_image_size(compose_train(tmp_path, ok))


def test_refused_size_creates_no_run(tmp_path, mlflow_template):
    """The refusal comes before the MLflow store is touched: no FAILED run is left behind."""
    import shutil

    from mlflow.tracking import MlflowClient

    import synthmed.train as train_module

    shutil.copy(mlflow_template, tmp_path / "mlflow.db")
    with pytest.raises(ValueError, match="multiple of 4"):
        train_module.train(compose_train(tmp_path, ["debug=smoke", "dataset.size=18"]))
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []
