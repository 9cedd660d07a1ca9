"""The one place metric keys are spelled.

Every family logs under these keys so GAN, VAE and diffusion runs line up in one MLflow chart. Config files
refer to them through the `metric:` resolver (``${metric:FID}``), never by retyping the string.
"""

TRAIN_LOSS = "train/loss"
TRAIN_LOSS_G = "train/loss_g"
TRAIN_LOSS_D = "train/loss_d"
TRAIN_LOSS_RECON = "train/loss_recon"
TRAIN_LOSS_KL = "train/loss_kl"

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
MS_SSIM_DIVERSITY = "val/ms_ssim_diversity"
SSIM = "val/ssim"
PSNR = "val/psnr"
MAE = "val/mae"
FD_DOMAIN = "val/fd_domain"
MEMORIZATION_RATE = "val/memorization_rate"
MEMORIZATION_RATE_FEATURE = "val/memorization_rate_feature"
COND_ACCURACY = "val/cond_accuracy"


def all_names() -> dict[str, str]:
    """Constant name -> metric key, for the `metric:` config resolver and for tests."""
    return {k: v for k, v in globals().items() if k.isupper() and isinstance(v, str)}
