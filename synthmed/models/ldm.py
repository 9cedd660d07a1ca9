"""LDM: diffusion in the latent space of a trained, frozen `vae` (2D or 3D)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from synthmed.metrics import names
from synthmed.models.base import GenerativeModule, OptimizerFactory
from synthmed.models.conditioning import GuidedDenoising
from synthmed.models.latents import LatentCache, TiledDecoder
from synthmed.models.noise import GaussianDiffusion, RectifiedFlow
from synthmed.models.vae import VAEModule
from synthmed.nets.checkpointing import checkpoint_unet


class LDMModule(GuidedDenoising, GenerativeModule):
    """Latent diffusion (Rombach et al. 2022, https://arxiv.org/abs/2112.10752) for medical images as in
    Pinaya et al. 2022 (https://arxiv.org/abs/2209.07162): a denoiser (MONAI `DiffusionModelUNet`) trained with
    the same noise processes as `ddpm` (synthmed/models/noise.py) on the latents of a frozen `vae`.

    Latents are multiplied by `latent_scale` = 1 / std of the training latents (Rombach et al., Sec. 4.3.2),
    estimated over `scale_batches` training batches when fitting starts; it is a buffer, so checkpoints keep it,
    and it is logged as `train/latent_scale`. The autoencoder's weights are part of this module's state dict
    (frozen), so an LDM checkpoint samples on its own.

    The module is built from plain values: `first_stage` is the VAE *architecture* (built from its recorded model
    config); its trained weights are loaded by whoever resolved `autoencoder` (`load_first_stage`, called by
    `synthmed.tracking.first_stage.build_model`), or arrive with an LDM checkpoint.

    With `cond`, labels/covariates reach the denoiser's cross-attention exactly as in `ddpm` (classifier-free
    guidance; synthmed/models/conditioning.py), as in the conditional LDMs of Rombach et al.

    Args:
        net: partial constructor of the denoiser
            `net(z_t [B, c, *latent], timesteps=[B], context=[B, 1, D]) -> [B, c, *latent]` with c = the VAE's
            latent channels; called here, with cross-attention switched on when the model is conditional.
        process: the noise process (DDPM/DDIM or rectified flow).
        first_stage: the VAE (a VAEModule) whose latents this model diffuses; frozen here.
        autoencoder: the VAE's identity (its config hash once resolved; a reference before that): a record only.
        autoencoder_digest: sha256 of the VAE weights it was trained on (`state_digest`): a record only.
        scale_batches: training batches whose latents estimate `latent_scale`.
        clip_sample: whether Gaussian samplers clip predicted x0 to [-1, 1]; conf/model/process/*.yaml read it
            from here. False: latents, unlike images, are not bounded.
        cond, num_classes, attr_ranges, cond_drop_prob, guidance_scale: as in DDPMModule.
        activation_checkpointing: recompute the denoiser's block activations in backward (as in DDPMModule).
        latent_cache: encode each training image once (keyed by its item `id`) and train on the kept latents;
            valid only without random augmentation (synthmed/models/latents.py).
        decode_tile: latent voxels per decoding tile `[h, w(, d)]` for sampling (MONAI sliding window, Gaussian
            blending), or None to decode whole latents; bounds the decoder's memory for large volumes.
        decode_overlap: share of a decoding tile overlapping its neighbour, in [0, 1).
        sample_size: spatial size `[H, W(, D)]` of generated images when it differs from `image_shape` (a volume
            larger than the training crop: the convolutional denoiser runs on a larger latent); None = image_shape.
        name, image_shape, optimizer, ema_decay, sample_batch_size, grad_clip_norm: see GenerativeModule.
    """

    family = "diffusion"
    first_stage_model = "vae"  # conf/model/vae.yaml: train it first (synthmed/tracking/first_stage.py finds it)
    test_overrides = ("model.process.num_inference_steps=3",)  # the contract test samples with 3 steps

    def __init__(self, net: Callable[..., nn.Module], process: GaussianDiffusion | RectifiedFlow, name: str,
                 image_shape: Sequence[int], optimizer: OptimizerFactory, first_stage: VAEModule | None = None,
                 autoencoder: str | None = None, autoencoder_digest: str | None = None, scale_batches: int = 4,
                 clip_sample: bool = False, ema_decay: float | None = 0.999, sample_batch_size: int = 16,
                 grad_clip_norm: float | None = 1.0, cond: str | None = None, num_classes: int = 2,
                 attr_ranges: Mapping[str, Sequence[float]] | None = None, cond_drop_prob: float = 0.1,
                 guidance_scale: float = 3.0, activation_checkpointing: bool = False, latent_cache: bool = False,
                 decode_tile: Sequence[int] | None = None, decode_overlap: float = 0.25,
                 sample_size: Sequence[int] | None = None) -> None:
        super().__init__(name, image_shape, optimizer, ema_decay, sample_batch_size, grad_clip_norm)
        self.save_hyperparameters(ignore=["net", "process", "optimizer", "first_stage"], logger=False)
        self.tiled_decoder = TiledDecoder(decode_tile, decode_overlap)
        self.latent_cache = LatentCache() if latent_cache else None
        if scale_batches < 1:
            raise ValueError(f"scale_batches must be >= 1, got {scale_batches}")
        if not isinstance(first_stage, VAEModule):
            raise ValueError(f"first_stage is model '{getattr(first_stage, 'name', first_stage)}' "
                             f"({type(first_stage).__name__}), not a VAE (synthmed.models.vae.VAEModule): "
                             "model.autoencoder must name a trained vae (synthmed/tracking/first_stage.py resolves it)")
        vae = first_stage
        if tuple(vae.image_shape) != self.image_shape:
            raise ValueError(f"autoencoder: trained on image_shape {list(vae.image_shape)}, this model generates "
                             f"{list(self.image_shape)}")
        latent_channels = vae.latent_shape[0]
        net = self.init_conditioning(net, cond, num_classes, attr_ranges, cond_drop_prob, guidance_scale)
        if (getattr(net, "in_channels", latent_channels), getattr(net, "out_channels", latent_channels)) != (
                latent_channels, latent_channels):
            raise ValueError(f"net.in_channels and net.out_channels must equal the autoencoder's latent channels "
                             f"({latent_channels}), got {net.in_channels}, {net.out_channels}")
        self.vae = vae.requires_grad_(False).eval()
        if activation_checkpointing:
            checkpoint_unet(net)
        self.net, self.process = net, process
        self.sample_latent = self._sample_latent(sample_size)
        self.register_buffer("latent_scale", torch.tensor(1.0))
        self.register_buffer("latent_scale_estimated", torch.tensor(False))
        self.init_ema(net)

    def noise_shape(self) -> tuple[int, ...]:
        """sample()'s per-sample noise is a latent `[c, *latent]` (of `sample_size` when set)."""
        return self.sample_latent

    def _sample_latent(self, sample_size: Sequence[int] | None) -> tuple[int, ...]:
        latent = tuple(self.vae.latent_shape)
        if sample_size is None:
            return latent
        factor = self.image_shape[1] // latent[1]
        if len(sample_size) != len(latent) - 1 or any(s < 1 or s % factor for s in sample_size):
            raise ValueError(f"sample_size must be null or {len(latent) - 1} positive sizes divisible by the "
                             f"autoencoder's down-sampling factor {factor}, got {list(sample_size)}")
        return (latent[0], *(s // factor for s in sample_size))

    def train(self, mode: bool = True) -> LDMModule:
        super().train(mode)
        self.vae.eval()  # frozen first stage: always in inference mode
        return self

    # ---- the first stage and the latent scale ---------------------------------------------------------------
    def load_first_stage(self, state_dict: dict[str, Tensor]) -> None:
        """Load the trained VAE's weights (a VAEModule state dict) into the frozen first stage."""
        self.vae.load_state_dict(state_dict)

    def on_train_start(self) -> None:
        if not bool(self.latent_scale_estimated):  # a resumed or loaded model keeps its recorded scale
            self.latent_scale.fill_(self.estimate_latent_scale(self.trainer.train_dataloader))
            self.latent_scale_estimated.fill_(True)
        for logger in self.loggers:
            logger.log_metrics({names.LATENT_SCALE: float(self.latent_scale)}, step=self.global_step)

    @torch.no_grad()
    def estimate_latent_scale(self, loader, n_batches: int | None = None) -> float:
        """1 / std of the latents of the first `n_batches` (default `scale_batches`) batches, over all ranks."""
        stats = torch.zeros(3, dtype=torch.float64, device=self.device)  # sum, sum of squares, count
        for i, batch in enumerate(loader):
            if i >= (n_batches or self.hparams.scale_batches):
                break
            z = self.vae.encode(batch["image"].to(self.device)).double()
            stats += torch.stack([z.sum(), z.pow(2).sum(), z.new_tensor(z.numel())])
        if self._trainer is not None:
            stats = self.trainer.strategy.reduce(stats, reduce_op="sum")
        mean = stats[0] / stats[2]
        return float(1.0 / (stats[1] / stats[2] - mean**2).clamp_min(1e-12).sqrt())

    def latents(self, x: Tensor, ids: Sequence[str] | None = None) -> Tensor:
        """Images `[B, C, *spatial]` -> scaled latents `[B, c, *latent]` (posterior means, unit variance overall).

        With the latent cache on and the items' `ids` given (training), each image is encoded only once.
        """
        with torch.no_grad():
            if self.latent_cache is not None and ids is not None:
                return self.latent_cache(ids, x, self.vae.encode) * self.latent_scale
            return self.vae.encode(x) * self.latent_scale

    def _train_ids(self, batch: dict) -> Sequence[str] | None:
        """The items' ids for the latent cache (None when it is off); the cache needs them."""
        if self.latent_cache is None:
            return None
        if "id" not in batch:
            raise KeyError("model.latent_cache=true keys latents by the items' 'id', but this data set's items have "
                           "none; set model.latent_cache=false")
        return list(batch["id"])

    # ---- training and sampling -----------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        z = self.latents(batch["image"], self._train_ids(batch))
        loss = self.process.loss(self.net, z, **self.context(batch, drop=True))
        self.log(names.TRAIN_LOSS, loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> Tensor:
        gen = torch.Generator().manual_seed(batch_idx)  # fixed noise: comparable across evaluations (as ddpm)
        loss = self.process.loss(self.sampling_net(), self.latents(batch["image"]), generator=gen,
                                 **self.context(batch))
        self.log_val_means({names.VAL_LOSS: loss}, batch["image"].shape[0])
        return loss

    def generate(self, noise: Tensor, cond: dict | None = None,
                 generators: list[torch.Generator] | None = None) -> Tensor:
        z = self.process.sample(self.denoiser(noise.shape[0], cond), noise, generators)
        return self.tiled_decoder(self.vae.decode, z / self.latent_scale)
