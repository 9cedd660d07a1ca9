"""The privacy gate around an export: calibrate on a run's data, audit the drawn batch, refuse / filter / warn.

`synthmed sample` draws the batch with a `draw(indices, positions)` callable and hands it here; nothing is written
until the batch has been decided. The gate reads the run's *whole* training split and its validation split (the
calibration set), and the in-domain encoder the run's metric suite trained (the same cache key: a cache hit).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from synthmed.data.datamodule import covariates
from synthmed.metrics import domain as D
from synthmed.metrics.cache import tensor_digest
from synthmed.metrics.privacy_gate import GateSettings, PrivacyGate

MODES = ("refuse", "filter", "warn", "off")


class GateRefused(RuntimeError):
    """The gate stopped an export; the message says how many samples were flagged and why.

    Attributes:
        report: the audit's report (JSON-able), for the run's record.
        pairs: the closest (sample, training image) pairs ``[2k, C, *spatial]`` (real patients: never shared).
    """

    def __init__(self, message: str, report: dict | None = None, pairs: Tensor | None = None):
        super().__init__(message)
        self.report, self.pairs = report or {}, pairs


@dataclass
class GatedBatch:
    """What passes the gate: images ``[n, C, *spatial]``, their draw indices ``[n]`` and the report."""

    images: Tensor
    indices: list[int]
    report: dict
    pairs: Tensor | None  # the closest (sample, training image) pairs ``[2k, C, *spatial]``; shows real patients


def model_drawer(model, seed: int, batch_size: int, cond: dict | None):
    """`draw(indices, positions)` for `gated_batch`: samples of the given draw indices, `batch_size` per forward
    pass, each with the request (condition) of its batch position."""

    def draw(indices: list[int], positions: list[int]) -> Tensor:
        parts = []
        with tqdm(total=len(indices), desc="sampling", unit="img") as bar:
            for start in range(0, len(indices), batch_size):
                chunk, pos = indices[start:start + batch_size], positions[start:start + batch_size]
                sub = {k: v[pos] for k, v in cond.items()} if cond else None
                parts.append(_draw_runs(model, chunk, seed, sub))
                bar.update(len(chunk))
        return torch.cat(parts)

    return draw


def _draw_runs(model, indices: list[int], seed: int, cond: dict | None) -> Tensor:
    """Samples of `indices` drawn in runs of consecutive indices: sample i depends only on (seed, i) (base.sample)."""
    out, start = [], 0
    while start < len(indices):
        stop = start + 1
        while stop < len(indices) and indices[stop] == indices[stop - 1] + 1:
            stop += 1
        sub = {k: v[start:stop] for k, v in cond.items()} if cond else None
        out.append(model.sample(stop - start, generator=torch.Generator().manual_seed(seed), cond=sub,
                                offset=indices[start]).cpu())
        start = stop
    return torch.cat(out)


def encoder_settings(metrics: Mapping | None) -> D.EncoderSettings:
    """The in-domain encoder settings of a run's metric suite config (its defaults where a key is missing)."""
    m, d = dict(metrics or {}), D.EncoderSettings()
    return D.EncoderSettings(tuple(m.get("domain_channels", d.channels)), int(m.get("domain_steps", d.steps)),
                             int(m.get("domain_batch_size", d.batch_size)), float(m.get("domain_lr", d.lr)),
                             int(m.get("domain_seed", d.seed)))


def build_gate(datamodule, settings: GateSettings, encoder: D.EncoderSettings | None, cache_dir: str | None,
               device: str = "cpu") -> tuple[PrivacyGate, dict]:
    """A gate calibrated on the full training split and the validation split of ``datamodule``.

    Returns:
        The gate and a record of the training split (fingerprint, size, content digest) for the report.
    """
    train, heldout = datamodule.images("train"), datamodule.images("val")
    if len(heldout) < 1:
        raise ValueError("the privacy gate calibrates on the validation split, which is empty: give the data set a val "
                         "split (e.g. dataset.datamodule.dataset.val_fraction), or pass gate=off to export unaudited")
    digest = tensor_digest(train)
    embed = None
    if encoder is not None:
        cond = covariates(datamodule.split("train"))
        model = D.EncoderBank(encoder, cache_dir, device).get("domain", train, cond, datamodule.fingerprint, digest)
        embed = lambda x: model.outputs(x)["features"]  # noqa: E731
    gate = PrivacyGate(train, heldout, settings, embed)
    split = {"fingerprint": datamodule.fingerprint, "split": "train", "n_images": len(train),
             "content_sha256": digest, "calibration_split": "val", "n_calibration": len(heldout)}
    return gate, split


def gated_batch(draw: Callable[[list[int], list[int]], Tensor], n: int, gate: PrivacyGate | None, mode: str,
                max_rounds: int = 5, top_k: int = 8) -> GatedBatch:
    """Draw ``n`` samples and apply ``mode``; raises ``GateRefused`` before anything is written.

    Args:
        draw: (draw indices, batch positions) -> images ``[len, C, *spatial]`` in [-1, 1]; sample i depends only on
            the seed and i, so a replacement is a new index, and positions say whose request (condition) it takes.
        n: batch size.
        gate: a calibrated gate (None only for mode "off").
        mode: one of ``MODES``.
        max_rounds: ``filter``: redraw rounds before giving up.
    """
    if mode not in MODES:
        raise ValueError(f"gate must be one of {MODES}, got {mode!r}")
    indices = list(range(n))
    images = draw(indices, indices)
    if mode == "off":
        return GatedBatch(images, indices, {"gate": "off", "audited": False}, None)
    audit = gate.audit(images)
    first = gate.report(audit, top_k)
    if mode == "filter":
        images, indices, audit, counts = _filter(draw, images, indices, gate, audit, max_rounds)
    report = {"gate": mode, "audited": True, **gate.report(audit, top_k)}
    order = audit.pixel_distance.argsort()[:top_k]
    pairs = torch.stack([img for i in order for img in (images[i], gate.train[audit.pixel_index[i]])])
    if mode == "filter":
        report["filter"] = counts | {"first_draw": {k: first[k] for k in ("passed", "reasons", "n_flagged",
                                                                            "rate_tests", "cap")}}
    elif mode == "refuse" and not audit.passed:
        raise GateRefused(refusal(audit.reasons(), int(audit.flagged.sum()), n), report, pairs)
    return GatedBatch(images, indices, report, pairs)


def refusal(reasons: list[str], flagged: int, n: int) -> str:
    return (f"privacy gate refused the export: {flagged} of {n} samples flagged; " + "; ".join(reasons)
            + ". Nothing was written. gate=filter drops and redraws flagged samples; gate=warn writes and lists them.")


def _filter(draw, images: Tensor, indices: list[int], gate: PrivacyGate, audit, max_rounds: int):
    """Replace flagged samples by new draws until none is flagged, at most ``max_rounds`` times."""
    next_index, dropped, rounds = len(indices), 0, 0
    while audit.flagged.any():
        if rounds == max_rounds:
            raise GateRefused(refusal(audit.reasons() or ["flagged samples remain"], int(audit.flagged.sum()),
                                      len(indices)) + f" (gate=filter gave up after {max_rounds} redraw rounds; "
                                      f"privacy.max_rounds sets how many)",
                              {"gate": "filter", **gate.report(audit), "filter": {"dropped": dropped,
                                                                                "rounds": rounds}})
        bad = audit.flagged.nonzero().flatten().tolist()
        fresh = list(range(next_index, next_index + len(bad)))
        images[bad] = draw(fresh, bad)
        for pos, index in zip(bad, fresh):
            indices[pos] = index
        next_index, dropped, rounds = next_index + len(bad), dropped + len(bad), rounds + 1
        audit = gate.audit(images)
    return images, indices, audit, {"dropped": dropped, "drawn": next_index, "rounds": rounds,
                                    "max_rounds": max_rounds}
