"""The one place metric keys are spelled.

Every family logs under these keys so GAN, VAE and diffusion runs line up in one MLflow chart. Config files
refer to them through the `metric:` resolver (``${metric:FID}``), never by retyping the string.
"""

import re

TRAIN_LOSS = "train/loss"
TRAIN_LOSS_G = "train/loss_g"
TRAIN_LOSS_D = "train/loss_d"
TRAIN_LOSS_RECON = "train/loss_recon"
TRAIN_LOSS_KL = "train/loss_kl"
TRAIN_LOSS_CYCLE = "train/loss_cycle"  # CycleGAN: L1 of A -> B -> A and B -> A -> B to the input
TRAIN_LOSS_IDENTITY = "train/loss_identity"  # CycleGAN: L1 of G_AB(b) to b and G_BA(a) to a
TRAIN_LOSS_STRUCTURE = "train/loss_structure"  # CycleGAN: 1 - gradient correlation of input and output, both ways
SKIPPED_STEPS = "train/skipped_steps"  # trainer.nonfinite=skip: optimizer steps dropped for a NaN/Inf loss or gradient
LATENT_SCALE = "train/latent_scale"  # LDM: 1/std of the autoencoder latents, estimated at fit start

VAL_LOSS = "val/loss"
FID = "val/fid"
FID_AXIAL = "val/fid_axial"
FID_CORONAL = "val/fid_coronal"
FID_SAGITTAL = "val/fid_sagittal"
FID_CI_LOW = "val/fid_ci_low"
FID_CI_HIGH = "val/fid_ci_high"
KID = "val/kid"
KID_STD = "val/kid_std"
PRECISION = "val/precision"
RECALL = "val/recall"
DENSITY = "val/density"
COVERAGE = "val/coverage"
MS_SSIM_DIVERSITY = "val/ms_ssim_diversity"  # a target, not a direction: read against the real data's own value
MS_SSIM_DIVERSITY_REAL = "val/ms_ssim_diversity_real"  # the same statistic, same code, on as many real images
MS_SSIM_DIVERSITY_GAP = "val/ms_ssim_diversity_gap"  # |generated - real|: what reports and searches rank by
SSIM = "val/ssim"
PSNR = "val/psnr"
MAE = "val/mae"
FD_DOMAIN = "val/fd_domain"
MEMORIZATION_RATE = "val/memorization_rate"
MEMORIZATION_RATE_FEATURE = "val/memorization_rate_feature"
COND_ACCURACY = "val/cond_accuracy"  # share of samples whose label the conditioning classifier reads as requested
COND_BALANCED_ACCURACY = "val/cond_balanced_accuracy"  # mean over the requested classes of their accuracy
COND_SEX_ACCURACY = "val/cond_sex_accuracy"
COND_AGE_MAE = "val/cond_age_mae"  # years between the requested age and the regressor's estimate
# Translation (metrics/translation.py): vs the real target in its native unit (HU for CT), inside the body mask.
MAE_HU = "val/mae_hu"
PSNR_HU = "val/psnr_hu"
SSIM_HU = "val/ssim_hu"
MAE_HU_IDENTITY = "val/mae_hu_identity"  # the identity mapping (source read as target), the baseline to beat
# Unpaired translation (metrics/structure.py, metrics/lesions.py): input vs output, no paired truth needed.
EDGE_SSIM = "val/edge_ssim"  # SSIM of the gradient-magnitude maps of input and output: structure kept, 1 = all
LESION_PRESERVED_RATE = "val/lesion_preserved_rate"  # inputs with a lesion whose output the reader reads as lesion
LESION_APPEARED_RATE = "val/lesion_appeared_rate"  # inputs without a lesion whose output the reader reads as lesion
LESION_N_POSITIVE = "val/lesion_n_positive"  # inputs with a lesion behind the preserved rate
LESION_N_NEGATIVE = "val/lesion_n_negative"  # inputs without one behind the appeared rate

# Reader studies (`synthmed reader-study analyze`), on the report's child run; pooled over all readings.
READER_ACCURACY = "reader_study/accuracy"  # share of readings right about real vs synthetic: target 0.5, not a direction
READER_AUC = "reader_study/auc"  # ROC AUC of the confidence-weighted "synthetic" answer: target 0.5
READER_FLEISS_KAPPA = "reader_study/fleiss_kappa"  # agreement of all readers on "synthetic"
READER_EQUIVALENCE_P = "reader_study/equivalence_p"  # TOST p-value of |accuracy - 0.5| < margin
READER_PLAUSIBILITY_DIFF = "reader_study/plausibility_diff"  # mean plausibility, synthetic minus real (1-5 scale)

# Bias across patient groups (`synthmed bias`), on the report's child run; each per grouping (``per_grouping``).
BIAS_REPRESENTATION_TVD = "bias/representation_tvd"  # generated (read) vs real held-out (read) group shares
BIAS_REPRESENTATION_MAX_GAP = "bias/representation_max_abs_gap"  # largest |share gap| of a group
BIAS_READER_FLOOR_TVD = "bias/reader_floor_tvd"  # real held-out (read) vs training shares: the reader's own error
BIAS_KID_DIFFERENCE = "bias/kid_difference"  # largest minus smallest per-group KID (in-domain features)
BIAS_AUROC_DIFFERENCE = "bias/auroc_difference"  # downstream: best minus worst group, per training condition
BIAS_SENSITIVITY_DIFFERENCE = "bias/sensitivity_difference"
BIAS_FNR_DIFFERENCE = "bias/fnr_difference"  # underdiagnosis gap
BIAS_FPR_DIFFERENCE = "bias/fpr_difference"


def per_class(key: str, cls: int) -> str:
    """``val/cond_accuracy`` -> ``val/cond_accuracy_class1``: the metric over samples requested as class ``cls``."""
    return f"{key}_class{int(cls)}"


def per_bin(key: str, low: float, high: float) -> str:
    """``val/cond_age_mae`` -> ``val/cond_age_mae_bin70_90``: the metric over requests in ``[low, high)``."""
    return f"{key}_bin{low:g}_{high:g}"


def on_real(key: str) -> str:
    """``val/cond_accuracy`` -> ``val/cond_accuracy_real``: the same metric on real held-out images with their true
    conditions, the ceiling that a generator's value is read against."""
    return f"{key}_real"


def per_grouping(key: str, grouping: str, condition: str | None = None) -> str:
    """``bias/fnr_difference`` -> ``bias/fnr_difference_sex_x_age_band`` (or ``..._sex_real_synth_1`` for the
    condition ``real+synth@1``): the statistic over the groups of one grouping (and one training condition).
    MLflow keys take only letters, digits and ``_-./ :``; every other character becomes ``_``."""
    suffix = grouping + (f"_{condition}" if condition else "")
    return f"{key}_{re.sub(r'[^A-Za-z0-9_.-]', '_', suffix)}"


def gap_change(key: str) -> str:
    """``bias/fnr_difference`` -> ``bias/fnr_difference_change``: candidate minus baseline, paired on cases."""
    return f"{key}_change"


def all_names() -> dict[str, str]:
    """Constant name -> metric key, for the `metric:` config resolver and for tests."""
    return {k: v for k, v in globals().items() if k.isupper() and isinstance(v, str)}


# Downstream utility (`synthmed utility`, on the report's child run of the generator). Per regime through
# `per_regime` (utility/auroc_real_synth); gains of a synthetic regime over the best real baseline through `gain_of`,
# with `ci_low` / `ci_high`. Logged once per real fraction, with step = the real fraction in per mille.
UTILITY_AUROC = "utility/auroc"
UTILITY_AUPRC = "utility/auprc"
UTILITY_BALANCED_ACCURACY = "utility/balanced_accuracy"
UTILITY_RARE_SENS_AT_SPEC90 = "utility/rare_sens_at_spec90"  # rare-class sensitivity at specificity 0.90
UTILITY_SPEC_AT_SENS90 = "utility/spec_at_sens90"  # specificity at rare-class sensitivity 0.90
UTILITY_BRIER = "utility/brier"
UTILITY_GAIN_AUROC = "utility/gain_auroc"  # real+synth minus the best real baseline (synth-only: ..._synth)
UTILITY_GAIN_AUPRC = "utility/gain_auprc"
UTILITY_GAIN_RARE_SENS_AT_SPEC90 = "utility/gain_rare_sens_at_spec90"
UTILITY_METRICS = {"auroc": UTILITY_AUROC, "auprc": UTILITY_AUPRC, "balanced_accuracy": UTILITY_BALANCED_ACCURACY,
                   "rare_sens_at_spec90": UTILITY_RARE_SENS_AT_SPEC90, "spec_at_sens90": UTILITY_SPEC_AT_SENS90,
                   "brier": UTILITY_BRIER}  # the harness's metric name -> its key
UTILITY_GAINS = {"auroc": UTILITY_GAIN_AUROC, "auprc": UTILITY_GAIN_AUPRC,
                 "rare_sens_at_spec90": UTILITY_GAIN_RARE_SENS_AT_SPEC90}


def per_regime(key: str, regime: str) -> str:
    """``utility/auroc`` -> ``utility/auroc_real_oversample`` (MLflow keys allow no '+')."""
    return f"{key}_{regime.replace('+', '_')}"


def gain_of(key: str, regime: str) -> str:
    """The gain key of a synthetic regime: ``utility/gain_auroc`` for real+synth (the headline), else per regime
    (``utility/gain_auroc_synth``)."""
    return key if regime == "real+synth" else per_regime(key, regime)


def ci_low(key: str) -> str:
    return f"{key}_ci_low"


def ci_high(key: str) -> str:
    return f"{key}_ci_high"
