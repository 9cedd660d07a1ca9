"""The `_target_` allowlist: the names a config file may ask Hydra to build.

A config file is data; through `hydra.utils.instantiate` a `_target_` can call anything importable, so a prefix
check is not enough (`torch.hub.load` downloads and runs code, `torch.utils.cpp_extension.load_inline` compiles and
runs C++). Two kinds of name are allowed, nothing else:

- a class defined in synthmed (resolved and checked: a function, or a class synthmed merely imports, is refused),
  or one of the synthmed factory functions named in `FACTORIES` (a reader chosen by the config's dimensions);
- a vetted third-party class named in `VETTED` below: optimizers, schedulers, losses, nets, callbacks, loggers that
  build in memory and neither download nor load files (MONAI's `PerceptualLoss` reads a cached torch-hub model;
  synthmed runs offline, so it fails rather than downloads when the weights are missing).
"""

from __future__ import annotations

import importlib

_OPTIMIZERS = ["Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "Adamax", "NAdam", "RAdam", "Adadelta"]
_SCHEDULERS = ["StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "CosineAnnealingWarmRestarts",
               "LinearLR", "ConstantLR", "OneCycleLR", "ReduceLROnPlateau", "PolynomialLR"]
_TORCH_NN = ["MSELoss", "L1Loss", "SmoothL1Loss", "HuberLoss", "BCEWithLogitsLoss", "CrossEntropyLoss",
             "Identity", "ReLU", "LeakyReLU", "SiLU", "GELU", "Tanh", "Sigmoid"]
_MONAI_NETS = ["DiffusionModelUNet", "AutoencoderKL", "BasicUNet", "UNet", "PatchDiscriminator",
               "MultiScalePatchDiscriminator", "VQVAE", "ControlNet", "SPADEDiffusionModelUNet"]
_MONAI_LOSSES = ["PerceptualLoss", "PatchAdversarialLoss", "SSIMLoss", "JukeboxLoss", "DiceLoss"]
_TORCHMETRICS = ["PeakSignalNoiseRatio", "StructuralSimilarityIndexMeasure",
                 "MultiScaleStructuralSimilarityIndexMeasure"]
_PL_CALLBACKS = ["ModelCheckpoint", "OnExceptionCheckpoint", "EarlyStopping", "LearningRateMonitor",
                 "TQDMProgressBar", "RichProgressBar", "Timer", "ModelSummary", "RichModelSummary"]
_PL_LOGGERS = ["MLFlowLogger", "CSVLogger"]

VETTED: frozenset[str] = frozenset(
    [f"torch.optim.{n}" for n in _OPTIMIZERS]
    + [f"torch.optim.lr_scheduler.{n}" for n in _SCHEDULERS]
    + [f"torch.nn.{n}" for n in _TORCH_NN]
    + [f"monai.networks.nets.{n}" for n in _MONAI_NETS]
    + [f"monai.losses.{n}" for n in _MONAI_LOSSES]
    + [f"torchmetrics.image.{n}" for n in _TORCHMETRICS]
    + [f"{pl}.callbacks.{n}" for pl in ("pytorch_lightning", "lightning.pytorch") for n in _PL_CALLBACKS]
    + [f"{pl}.loggers.{n}" for pl in ("pytorch_lightning", "lightning.pytorch") for n in _PL_LOGGERS]
)
OWN_PACKAGE = "synthmed"
# synthmed functions a config may call, each a factory that only picks one of synthmed's own classes.
FACTORIES: frozenset[str] = frozenset({"synthmed.data.dicom_images.dicom_dataset"})


def locate(dotted: str) -> object:
    """The object a dotted path names (`pkg.module.Class`), importing the longest module prefix.

    Only called for names under synthmed or in VETTED: importing anything else could run its module code.
    """
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"cannot import '{dotted}'")


def refusal(target: str) -> str | None:
    """Why `target` may not be built, or None when it may."""
    if target in VETTED or target in FACTORIES:
        return None
    if target.split(".")[0] != OWN_PACKAGE:
        return (f"it is neither a synthmed class nor one of the vetted torch/MONAI/torchmetrics/Lightning classes "
                f"(synthmed.targets.VETTED; e.g. {', '.join(sorted(VETTED)[:3])}, ...)")
    try:
        obj = locate(target)
    except (ImportError, AttributeError) as exc:
        return f"it cannot be imported ({exc})"
    if not isinstance(obj, type) or not (obj.__module__ or "").startswith(OWN_PACKAGE + "."):
        kind = "a class" if isinstance(obj, type) else "not a class"
        return f"it is {kind} from '{getattr(obj, '__module__', '?')}', not a class defined in synthmed"
    return None
