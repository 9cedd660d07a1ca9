"""CycleGAN, unpaired image-to-image translation (the translator contract is in translator.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from synthmed.metrics import names
from synthmed.metrics.structure import edge_ssim, gradient_correlation
from synthmed.models import adversarial as adv
from synthmed.models.base import OptimizerFactory
from synthmed.models.translator import Translator


class ImagePool:
    """A buffer of past generated images (Shrivastava et al. 2017; CycleGAN's pool of 50): the discriminator sees a
    mix of current and older fakes, which damps the oscillation of the two players.

    Each image of a query is returned as is until the pool is full; then with probability 1/2 it is swapped for a
    stored one (which it replaces). Draws use the global RNG (seeded by Lightning, restored on resume). The pool is
    training state: `state()` / `load_state()` carry it through a checkpoint as one tensor, so a resumed run shows
    the discriminators the same past fakes an uninterrupted run would.

    Args:
        size: images kept; 0 disables the pool.
    """

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"pool_size must be >= 0, got {size}")
        self.size, self.images = size, []

    def query(self, fakes: Tensor) -> Tensor:
        """`[B, C, *spatial]` (detached) -> as many images, part of them from the pool."""
        if self.size == 0:
            return fakes
        out = []
        for image in fakes.detach():
            if len(self.images) < self.size:
                self.images.append(image)
                out.append(image)
            elif float(torch.rand(())) < 0.5:
                i = int(torch.randint(self.size, ()))
                out.append(self.images[i].to(image))  # a restored pool may still sit on the CPU
                self.images[i] = image
            else:
                out.append(image)
        return torch.stack(out)

    def state(self) -> Tensor:
        """The stored images `[k, C, *spatial]` in insertion order (k <= size; `[0]` when empty), on the CPU."""
        return torch.stack(self.images).cpu() if self.images else torch.zeros(0)

    def load_state(self, images: Tensor) -> None:
        """Replace the stored images by `images` `[k, C, *spatial]` (what `state()` returned)."""
        if len(images) > self.size:
            raise ValueError(f"checkpoint holds {len(images)} pooled images, more than pool_size={self.size}: "
                             "resume with the pool_size the run was trained with")
        self.images = list(images.unbind(0)) if images.ndim > 1 else []


class CycleGANModule(Translator):
    """CycleGAN (Zhu et al. 2017, https://arxiv.org/abs/1703.10593): two generators G_AB (source -> target) and
    G_BA and two patch discriminators D_B and D_A, trained on *unpaired* images of the two domains with an
    adversarial loss, the cycle-consistency loss `|G_BA(G_AB(a)) - a| + |G_AB(G_BA(b)) - b|` and optionally the
    identity loss `|G_AB(b) - b| + |G_BA(a) - a|`. MR -> CT as in Wolterink et al. (SASHIMI 2017).

    The cycle loss does not forbid a translator from adding or removing a lesion as long as it can undo it (Cohen et
    al., MICCAI 2018, "Distribution matching losses can hallucinate features"); `lambda_structure` adds the
    gradient-consistency term of Hiasa et al. (2018), `2 - GC(a, G_AB(a)) - GC(b, G_BA(b))` on gradient magnitudes
    (synthmed/metrics/structure.py), which penalises an edge in the output where the input has none.

    Training batches carry `image` (domain A) and `target` (domain B, from other subjects in an unpaired data set).
    Lightning manual optimization: per batch one step of both generators, then one of both discriminators on pooled
    fakes; only the generators' step advances `global_step`. `sample()` runs `direction` (`set_direction`), a2b by
    default; EMA (if on) tracks both generators.

    Args:
        generator: partial, called as `generator(in_channels=, out_channels=)` twice (G_AB, G_BA); the built net
            maps `[B, C_in, *spatial]` to `[B, C_out, *spatial]` (MONAI `BasicUNet`), passed through tanh.
        discriminator: partial, called with `in_channels` of its domain; the built net returns a list whose last
            entry is the patch score map (MONAI `PatchDiscriminator`).
        optimizer: partial optimizer of both generators; `optimizer_d`: of both discriminators.
        loss: adversarial loss, `lsgan` (the paper's), `hinge` or `non_saturating`.
        lambda_cycle: weight of the cycle loss (10 in the paper).
        lambda_identity: weight of the identity loss relative to `lambda_cycle` (0.5 in the paper; needs equal
            channel counts in both domains).
        lambda_structure: weight of the gradient-consistency term (0 = off).
        pool_size: past fakes shown to the discriminators (50 in the paper; 0 = off).
        source_channels, mask_threshold, mask_dilate, name, image_shape, ema_decay, sample_batch_size,
            grad_clip_norm: see Translator.
    """

    family = "gan"
    uses_noise = False
    directions = ("a2b", "b2a")
    learns_unpaired = True
    # Contract test only: small nets keep its 2D and 3D cases within seconds.
    test_overrides = ("model.generator.features=[8,8,16,16,16,8]", "model.discriminator.channels=8",
                      "model.pool_size=2")

    def __init__(self, generator: Callable[..., nn.Module], discriminator: Callable[..., nn.Module], name: str,
                 image_shape: Sequence[int], optimizer: OptimizerFactory, optimizer_d: OptimizerFactory,
                 loss: str = "lsgan", lambda_cycle: float = 10.0, lambda_identity: float = 0.5,
                 lambda_structure: float = 0.0, pool_size: int = 50, ema_decay: float | None = None,
                 sample_batch_size: int = 16, grad_clip_norm: float | None = None, source_channels: int | None = None,
                 mask_threshold: float | None = None, mask_dilate: int = 2) -> None:
        super().__init__(name, image_shape, optimizer, ema_decay, sample_batch_size, grad_clip_norm, source_channels,
                         mask_threshold, mask_dilate)
        self.save_hyperparameters(ignore=["generator", "discriminator", "optimizer", "optimizer_d"], logger=False)
        adv.check_loss(loss)
        for key, value in dict(lambda_cycle=lambda_cycle, lambda_identity=lambda_identity,
                               lambda_structure=lambda_structure).items():
            if value < 0:
                raise ValueError(f"{key} must be >= 0, got {value}")
        c_a, c_b = self.source_channels, self.image_shape[0]
        if lambda_identity > 0 and c_a != c_b:
            raise ValueError(f"lambda_identity > 0 needs equal channels in both domains, got source_channels={c_a} "
                             f"and image_shape[0]={c_b}; set lambda_identity=0")
        self.automatic_optimization = False
        self.generators = nn.ModuleDict({"a2b": generator(in_channels=c_a, out_channels=c_b),
                                         "b2a": generator(in_channels=c_b, out_channels=c_a)})
        self.discriminators = nn.ModuleDict({"a": discriminator(in_channels=c_a), "b": discriminator(in_channels=c_b)})
        self.optimizer_d_factory = optimizer_d
        self.loss_type = loss
        self.lambda_cycle, self.lambda_identity, self.lambda_structure = lambda_cycle, lambda_identity, lambda_structure
        self.pools = {"a": ImagePool(pool_size), "b": ImagePool(pool_size)}
        self.init_ema(self.generators)

    def configure_optimizers(self):
        return [self.optimizer_factory(self.generators.parameters()),
                self.optimizer_d_factory(self.discriminators.parameters())]

    def _translate(self, direction: str, x: Tensor) -> Tensor:
        return torch.tanh(self.generators[direction](x))

    def _score(self, domain: str, x: Tensor) -> Tensor:
        return self.discriminators[domain](x)[-1]

    def training_step(self, batch: dict, batch_idx: int) -> None:
        real_a, real_b = self.pair(batch)
        opt_g, opt_d = self.optimizers()
        with self.toggled_optimizer(opt_g):
            fake_b, fake_a = self._translate("a2b", real_a), self._translate("b2a", real_b)
            losses = self._generator_losses(real_a, real_b, fake_a, fake_b)
            loss_g = sum(losses.values())
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(loss_g)
            opt_g.step()
        with self.toggled_optimizer(opt_d):
            loss_d = (adv.d_loss(self.loss_type, self._score("b", real_b),
                                 self._score("b", self.pools["b"].query(fake_b)))
                      + adv.d_loss(self.loss_type, self._score("a", real_a),
                                   self._score("a", self.pools["a"].query(fake_a))))
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(loss_d)
            adv.step_uncounted(self, opt_d)
        n = len(real_a)
        self.log(names.TRAIN_LOSS_G, loss_g, prog_bar=True, batch_size=n)
        self.log(names.TRAIN_LOSS_D, loss_d, prog_bar=True, batch_size=n)
        self.log_dict({k: v / self._weight(k) for k, v in losses.items() if k != "adv"}, batch_size=n)

    def _weight(self, key: str) -> float:
        return {names.TRAIN_LOSS_CYCLE: self.lambda_cycle,
                names.TRAIN_LOSS_IDENTITY: self.lambda_cycle * self.lambda_identity,
                names.TRAIN_LOSS_STRUCTURE: self.lambda_structure}[key]

    def _generator_losses(self, real_a: Tensor, real_b: Tensor, fake_a: Tensor, fake_b: Tensor) -> dict[str, Tensor]:
        """The weighted terms of the generators' objective (terms with weight 0 are not computed)."""
        losses = {"adv": adv.g_loss(self.loss_type, self._score("b", fake_b))
                  + adv.g_loss(self.loss_type, self._score("a", fake_a))}
        if self.lambda_cycle:
            cycle = (F.l1_loss(self._translate("b2a", fake_b), real_a)
                     + F.l1_loss(self._translate("a2b", fake_a), real_b))
            losses[names.TRAIN_LOSS_CYCLE] = self.lambda_cycle * cycle
        if self.lambda_identity and self.lambda_cycle:
            identity = (F.l1_loss(self._translate("a2b", real_b), real_b)
                        + F.l1_loss(self._translate("b2a", real_a), real_a))
            losses[names.TRAIN_LOSS_IDENTITY] = self.lambda_cycle * self.lambda_identity * identity
        if self.lambda_structure:
            gc = gradient_correlation(real_a.float(), fake_b.float()) + gradient_correlation(real_b.float(),
                                                                                            fake_a.float())
            losses[names.TRAIN_LOSS_STRUCTURE] = self.lambda_structure * (2.0 - gc).mean()
        return losses

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """The image pools as plain tensors (`torch.load(weights_only=True)` reads them): without them a resumed run
        restarts with empty pools and departs from the uninterrupted run at its first discriminator step."""
        checkpoint["image_pools"] = {domain: pool.state() for domain, pool in self.pools.items()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        for domain, images in checkpoint.get("image_pools", {}).items():
            self.pools[domain].load_state(images)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """HU metrics against the paired truth (where the val split has one) and edge SSIM of input vs output."""
        source = batch["image"]
        pred = self.sample(len(source), generator=torch.Generator().manual_seed(batch_idx), cond={"source": source})
        self.log(names.EDGE_SSIM, edge_ssim(source, pred).mean(), batch_size=len(source), sync_dist=True)
        if self.has_paired_truth("val"):
            self.log_translation_metrics(batch, batch_idx, pred)

    def noise_shape(self) -> tuple[int, ...]:
        """CycleGAN reads no noise: one number per sample, only for the device and dtype."""
        return (1,)

    def generate(self, noise: Tensor, cond: dict | None = None,
                 generators: list[torch.Generator] | None = None) -> Tensor:
        return torch.tanh(self.sampling_net()[self.direction](cond["source"].to(noise)))
