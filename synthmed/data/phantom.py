"""Built-in synthetic head phantom: the default data set, rendered from a seed, nothing downloaded.

Every subject is a few nested ellipsoids (scalp, skull, CSF, grey and white matter, two lateral ventricles), in the
spirit of the Shepp-Logan head phantom (Shepp & Logan, IEEE Trans. Nucl. Sci. 21(3), 1974), with per-subject shape
variation, covariates that change the anatomy (sex: head size; age: ventricles and CSF spaces widen), optional focal
lesions, and two renderings of the same noise-free anatomy: MR T1-like (`image`) and CT-like (`target`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np
import torch

GENERATOR_VERSION = 1  # bump on any change that alters a pixel, so the fingerprint (and what is keyed on it) changes
SPLITS = ("train", "val", "test")
# (MR T1-like native intensity in [0, 1], CT value in HU) per tissue. T1: fat-rich scalp bright, marrow-filled skull
# moderately bright, WM > GM > CSF, lesions bright (as on FLAIR). CT: bone far above soft tissue, grey and white
# matter ~10 HU apart (a "flat" brain), CSF near water, lesions hypodense like an infarct.
TISSUE = {
    "air": (0.0, -1000.0), "scalp": (0.8, 20.0), "skull": (0.55, 1000.0), "csf": (0.1, 5.0),
    "gm": (0.5, 40.0), "wm": (0.72, 28.0), "lesion": (0.97, 12.0),
}
CT_WINDOW = (-1000.0, 1000.0)  # HU mapped linearly to [-1, 1]
CT_NOISE_HU = 200.0  # target noise std in HU per unit of noise_std: 6 HU at the default, typical of a head CT
LESION_RADIUS = (0.05, 0.1)  # default lesion radius range, FOV half-widths: 2-3 px at 32 px, 3-6 px at 64 px
MAX_LESIONS, LESION_TRIES = 3, 64  # rejection sampling: 64 tries leave a miss probability below 1e-12
_CHUNK_VOXELS = 1 << 16  # voxels rendered at a time: 256 KiB temporaries stay in cache, 2-3x faster than 16 MiB


def sample_subjects(n: int, spatial_dims: int, lesion_prevalence: float, seed: int, split: str,
                    lesion_radius: tuple[float, float] = LESION_RADIUS, planted: dict | None = None,
                    domain: int = 0) -> dict:
    """Draws every per-subject parameter of one split; cheap, renders nothing. `domain` 1 draws the other subjects
    of an unpaired data set's target domain (0: the default subjects).

    Args:
        planted: planted-bias options (see `PhantomDataset`): `lesion_prevalence_by_sex`, `lesion_contrast_by_sex`,
            `train_exclude_age`; absent or None ones draw nothing, so default subjects stay bit-identical.

    Returns:
        Dict of numpy arrays with leading dimension `n` (`label`, `sex`, `age`, geometry, texture, lesions, and
        `lesion_contrast` when planted).
    """
    planted = {k: v for k, v in (planted or {}).items() if v is not None}
    cov, anat, les, _ = _streams(seed, split, domain)
    label = np.zeros(n, np.int64)
    label[cov.permutation(n)[: round(lesion_prevalence * n)]] = 1  # exact count, so the rare class is exactly rare
    s = {"label": label, "sex": cov.integers(0, 2, n), "age": cov.uniform(20.0, 90.0, n)}
    # Planted biases draw after the default draws, from the same stream: without them nothing changes.
    if "lesion_prevalence_by_sex" in planted:
        s["label"] = _labels_by_sex(cov, s["sex"], planted["lesion_prevalence_by_sex"])
    if "train_exclude_age" in planted and split == "train":
        s["age"] = _skip_age_band(cov, s["age"], planted["train_exclude_age"])
    s.update(_sample_anatomy(anat, s["sex"], (s["age"] - 20.0) / 70.0))
    s.update(_sample_lesions(les, s, spatial_dims, lesion_radius))
    if "lesion_contrast_by_sex" in planted:
        s["lesion_contrast"] = np.asarray(planted["lesion_contrast_by_sex"], np.float64)[s["sex"]]
    return s


def _labels_by_sex(rng: np.random.Generator, sex: np.ndarray, prevalence: Sequence[float]) -> np.ndarray:
    """Exactly round(prevalence[k] * n_k) lesion subjects among the n_k subjects of sex k."""
    label = np.zeros(len(sex), np.int64)
    for k, p in enumerate(prevalence):
        members = np.flatnonzero(sex == k)
        label[rng.permutation(members)[: round(p * len(members))]] = 1
    return label


def _skip_age_band(rng: np.random.Generator, age: np.ndarray, band: Sequence[float]) -> np.ndarray:
    """Ages in [low, high) redrawn uniformly from the rest of 20-90 years: a band missing from a split."""
    low, high = float(band[0]), float(band[1])
    age, inside = age.copy(), (age >= low) & (age < high)
    redrawn = rng.uniform(20.0, 90.0 - (high - low), int(inside.sum()))
    age[inside] = np.where(redrawn >= low, redrawn + (high - low), redrawn)
    return age


def _streams(seed: int, split: str, domain: int = 0) -> list[np.random.Generator]:
    """Independent random streams of a split: covariates, anatomy, lesions, noise. A split's own entropy makes
    its subjects disjoint from the other splits' and independent of their sizes; domain 1 (an unpaired target
    domain) adds its own entropy, domain 0 keeps the streams the data set always had."""
    entropy = [seed, SPLITS.index(split)] + ([domain] if domain else [])
    return [np.random.default_rng(s) for s in np.random.SeedSequence(entropy).spawn(4)]


def _jitter(rng: np.random.Generator, rel: float, shape) -> np.ndarray:
    """Multiplicative jitter 1 + rel * N(0, 1) clipped at 2 sigma, so no subject is grotesque."""
    return 1.0 + rel * np.clip(rng.standard_normal(shape), -2.0, 2.0)


def _sample_anatomy(rng: np.random.Generator, sex: np.ndarray, aging: np.ndarray) -> dict:
    """Geometry in head units (the head's A-P semi-axis is 1) and random-field coefficients; aging in [0, 1]."""
    n = len(sex)
    s = {
        "scale": 0.74 * np.where(sex == 1, 1.065, 1.0) * _jitter(rng, 0.025, n),  # head A-P semi-axis / FOV half
        "radii": np.array([0.86, 1.0, 0.8]) * _jitter(rng, 0.03, (n, 3)),  # x (L-R), y (A-P), z (S-I)
        "theta": rng.uniform(-0.2, 0.2, n),  # in-plane rotation, rad (~ +-11 degrees)
        "centre": rng.uniform(-0.04, 0.04, (n, 3)),  # FOV units
        "scalp": rng.uniform(0.035, 0.055, n),
        "skull": rng.uniform(0.05, 0.085, n),
        "rim": (0.012 + 0.03 * aging) * _jitter(rng, 0.1, n),  # subarachnoid CSF: atrophy widens it
        "vent_w": (0.03 + 0.07 * aging) * _jitter(rng, 0.08, n),  # lateral ventricles widen with age
        "vent_l": (0.16 + 0.05 * aging) * _jitter(rng, 0.05, n),
        "vent_tilt": rng.uniform(0.3, 0.5, n),  # frontal horns diverge: the "butterfly"
        "fissure": 0.006 + 0.01 * aging,  # half-width of the interhemispheric fissure
    }
    # Random Fourier fields (frequencies in cycles per head unit / 2): folds of the cortex, a smooth intensity
    # texture of the parenchyma, and the scanner's bias field (image frame, at most half a cycle across the FOV).
    for name, lo, hi, terms in (("gyri", 5.0, 9.0, 6), ("tex", 1.0, 3.0, 4), ("bias", 0.2, 0.5, 2)):
        direction = rng.standard_normal((n, terms, 3))
        direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
        s[name + "_k"] = direction * rng.uniform(lo, hi, (n, terms, 1))
        s[name + "_phase"] = rng.uniform(0.0, 2 * np.pi, (n, terms))
    return s


def _sample_lesions(rng: np.random.Generator, s: dict, spatial_dims: int,
                    lesion_radius: tuple[float, float] = LESION_RADIUS) -> dict:
    """1-3 lesion balls per lesion subject, in the parenchyma, clear of ventricles, midline and cortex surface.

    Drawn for every subject, from their own stream, so a subject's anatomy does not depend on its label.
    """
    n, shape = len(s["sex"]), (len(s["sex"]), MAX_LESIONS, LESION_TRIES)
    radius = rng.uniform(*lesion_radius, shape[:2])
    cand = rng.uniform(-0.8, 0.8, (*shape, 3))
    if spatial_dims == 2:  # put each lesion centre on the rendered slice (z = 0 in the FOV) so that it shows
        cand[..., 2] = (-s["centre"][:, 2] / s["scale"])[:, None, None]
    p = [cand[..., d].reshape(n, -1) for d in range(3)]
    clear = np.repeat(radius, LESION_TRIES, axis=1) + 0.03
    g = {k: v[:, None] for k, v in s.items() if v.ndim == 1}
    r_min = s["radii"].min(1)[:, None]
    ok = _ellipse_rho(p, s["radii"][:, :, None]) < _brain_edge(g) - clear / r_min  # rho grows <= 1/r_min per unit
    ok &= np.abs(p[0]) > clear  # not astride the interhemispheric fissure
    for rho in _ventricle_rhos(p, g, margin=clear):
        ok &= rho > 1.0  # semi-axes grown by `clear` contain the ventricle dilated by `clear`
    pick = ok.reshape(shape).argmax(-1)  # first valid try (try 0 if none, with probability < 1e-12)
    active = (s["label"][:, None] == 1) & (np.arange(MAX_LESIONS) < rng.integers(1, MAX_LESIONS + 1, n)[:, None])
    centre = np.take_along_axis(cand, pick[:, :, None, None], axis=2)[:, :, 0]
    return {"lesion_centre": centre, "lesion_radius": np.where(active, radius, 0.0)}


def _ellipse_rho(p: list, radii: np.ndarray) -> np.ndarray:
    """Ellipsoid 'radius' (1 on the surface) of points p ([N, P] per axis) for semi-axes radii [N, 3, 1]."""
    return np.sqrt(sum((p[d] / radii[:, d]) ** 2 for d in range(3)))


def _brain_edge(s: dict) -> np.ndarray:
    """Outer brain surface on the head's rho scale: inside scalp, skull and the subarachnoid CSF rim."""
    return 1.0 - s["scalp"] - s["skull"] - s["rim"]


def _ventricle_rhos(p: list, s: dict, margin=0.0) -> list:
    """Rho of the lateral ventricles: per side a frontal horn and an occipital horn, each an ellipsoid tilted so
    the horns diverge (the axial "butterfly"), a thin septum between the two sides."""
    rhos, w, length = [], s["vent_w"], s["vent_l"]
    for side in (-1.0, 1.0):
        for x0, y0, tilt, scale in ((w + 0.015, -0.1, s["vent_tilt"], 1.0),
                                    (w + 0.05, 0.12, -0.6 * s["vent_tilt"], 0.8)):
            dx, dy = p[0] - side * x0, p[1] - y0
            c, sn = np.cos(side * tilt), np.sin(side * tilt)
            u, v = c * dx + sn * dy, -sn * dx + c * dy
            rhos.append(np.sqrt((u / (scale * w + margin)) ** 2 + (v / (scale * length + margin)) ** 2
                                + (p[2] / (0.28 + margin)) ** 2))
    return rhos


def _fourier(p: list, k: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Smooth random field in [-1, 1]: the mean of cosines cos(pi k.p + phase); k [N, T, 3], phase [N, T]."""
    out = 0.0
    for t in range(k.shape[1]):
        out = out + np.cos(phase[:, t, None] + np.pi * sum(k[:, t, d, None] * p[d] for d in range(3)))
    return out / k.shape[1]


def render_subjects(s: dict, grid: list, size: int, noise_std: float, bias_strength: float,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Renders a batch of subjects on the FOV grid, MR T1-like and CT-like, both mapped to [-1, 1].

    Args:
        s: per-subject parameters from `sample_subjects`, sliced to the batch (leading dimension N).
        grid: x (L-R), y (A-P), z (S-I) FOV coordinates in [-1, 1], each [1, P] (z is [1, 1] for 2D).
        size: side length in pixels; sets the partial-volume edge width.
        noise_std: Rician noise std of the MR image, in native units; the CT noise is Gaussian, CT_NOISE_HU x it.
        bias_strength: peak relative amplitude of the smooth multiplicative MR bias field.
        rng: noise stream.

    Returns:
        (image, target), each float32 [N, P] in [-1, 1].
    """
    s = {k: v.astype(np.float32) for k, v in s.items()}  # float32 throughout: half the memory traffic of float64
    g = {k: v[:, None] for k, v in s.items() if v.ndim == 1}
    p, h = _head_coords(grid, s, g), (2.0 / size) / g["scale"]  # h: pixel pitch in head units
    rho = _ellipse_rho(p, s["radii"][:, :, None])
    r_min = s["radii"].min(1)[:, None]
    inside = lambda sd: np.clip(0.5 + sd / h, 0.0, 1.0)  # signed distance -> area fraction: partial volume
    gyri = _fourier(p, s["gyri_k"], s["gyri_phase"])
    brain = inside((_brain_edge(g) - rho - 0.015 * gyri) * r_min)
    layers = [("scalp", inside((1.0 - rho) * r_min)), ("skull", inside((1.0 - g["scalp"] - rho) * r_min)),
              ("csf", inside((1.0 - g["scalp"] - g["skull"] - rho) * r_min)), ("gm", brain),
              ("wm", inside((0.84 * _brain_edge(g) - rho - 0.07 * gyri) * r_min)),  # WM follows the folds
              ("csf", brain * inside(g["fissure"] - np.abs(p[0])) * inside(np.abs(p[1] - 0.05) - 0.42)),
              ("csf", inside((1.0 - np.minimum.reduce(_ventricle_rhos(p, g))) * g["vent_w"])),
              ("lesion", _lesions(p, s, h) * (g["lesion_contrast"] if "lesion_contrast" in g else 1.0))]
    mr, ct = np.zeros_like(rho), np.full_like(rho, TISSUE["air"][1])
    for tissue, frac in layers:  # paint outside-in; a fraction blends partial-volume edges
        mr += frac * (TISSUE[tissue][0] - mr)
        ct += frac * (TISSUE[tissue][1] - ct)
    tex = _fourier(p, s["tex_k"], s["tex_phase"])
    mr *= 1.0 + 0.1 * tex * brain  # low-frequency tissue texture, MR only: the CT brain stays flat
    mr *= 1.0 + bias_strength * _fourier(grid, s["bias_k"], s["bias_phase"])
    if noise_std > 0:  # MR magnitude of complex Gaussian noise is Rician; CT noise is about Gaussian
        n = rng.standard_normal((3, *mr.shape), dtype=np.float32) * np.float32(noise_std)
        mr = np.sqrt((mr + n[0]) ** 2 + n[1] ** 2)
        ct += n[2] * np.float32(CT_NOISE_HU)
    ct = (ct - CT_WINDOW[0]) / (CT_WINDOW[1] - CT_WINDOW[0])
    return np.clip(2.0 * mr - 1.0, -1.0, 1.0), np.clip(2.0 * ct - 1.0, -1.0, 1.0)


def _head_coords(grid: list, s: dict, g: dict) -> list:
    """FOV coordinates -> head frame: centred, rotated in-plane, scaled so the head's A-P semi-axis is 1."""
    dx, dy = grid[0] - s["centre"][:, 0, None], grid[1] - s["centre"][:, 1, None]
    c, sn = np.cos(g["theta"]), np.sin(g["theta"])
    dz = grid[2] - s["centre"][:, 2, None]
    return [(c * dx + sn * dy) / g["scale"], (-sn * dx + c * dy) / g["scale"], dz / g["scale"]]


def _lesions(p: list, s: dict, h: np.ndarray) -> np.ndarray:
    """Union of the subjects' lesion balls as an area fraction [N, P]; all-zero for a healthy subject."""
    out = np.zeros(np.broadcast_shapes(p[0].shape, p[1].shape), np.float32)
    for i, j in zip(*np.nonzero(s["lesion_radius"])):  # only lesion subjects pay: ~10% of them
        c, r = s["lesion_centre"][i, j], s["lesion_radius"][i, j]
        d = np.sqrt(sum((p[a][i] - c[a]) ** 2 for a in range(3)))
        out[i] = np.maximum(out[i], np.clip(0.5 + (r - d) / h[i], 0.0, 1.0))
    return out


class PhantomDataset(torch.utils.data.Dataset):
    """Synthetic axial head phantom in the spirit of Shepp-Logan (Shepp & Logan, 1974), rendered from a seed.

    Each subject has a scalp, a skull ring, subarachnoid CSF, folded grey/white matter with a smooth texture, two
    lateral ventricles, a midline fissure, a smooth multiplicative bias field and Rician noise (the `image`, MR
    T1-like), and the same noise-free anatomy rendered CT-like with its own smaller Gaussian noise (the `target`,
    conceptually HU in the window [-1000, 1000]). Covariates change the anatomy: `sex` 1 heads are ~6.5% larger,
    ventricles, sulci and the fissure widen with `age` (uniform 20-90 years). Label 1 subjects (exactly
    round(lesion_prevalence * n) of a split) carry 1-3 focal lesions in the parenchyma: bright on MR, dark on CT.
    Splits are disjoint subjects (their own random streams); everything is rendered once, here, and cached
    (memory: 8 bytes x n x voxels).

    Items: `image` and `target` float32 `[1, H, W]` (2D, an axial slice through the ventricles) or `[1, H, W, D]`
    (3D, D axial slices) in [-1, 1], with H anterior-posterior, W left-right, D inferior-superior; `label` int;
    `attrs` {"sex": int, "age": float}; `id` "phantom-<split>-<index:05d>".

    Args:
        split: "train", "val" or "test".
        spatial_dims: 2 or 3.
        size: side length in pixels, 16-256; None for 64 (2D) or 32 (3D).
        n_train: subjects in the train split.
        n_val: subjects in the val split.
        n_test: subjects in the test split.
        lesion_prevalence: fraction of subjects with lesions, in [0, 1].
        lesion_radius: [min, max] of the lesion radii, in FOV half-widths (0.05 is 5% of the half side), within
            [0.02, 0.25]: how large, hence how easy to see and to learn, the rare finding is.
        noise_std: MR Rician noise std in native units ([0, 1] = image range); 0 for noise-free.
        bias_strength: peak relative amplitude of the MR bias field, in [0, 1).
        seed: non-negative; with the other arguments it fixes every pixel.
        lesion_prevalence_by_sex: planted bias, [p_sex0, p_sex1]: lesion prevalence per sex (exactly
            round(p_k * n_k) of the n_k subjects of sex k), replacing `lesion_prevalence`; None: not planted.
        lesion_contrast_by_sex: planted bias, [c_sex0, c_sex1] in [0, 1]: lesion conspicuity per sex (the
            lesion's partial-volume fraction is scaled by it: 1 = default contrast, 0.5 = half-way to the tissue).
        train_exclude_age: planted bias, [low, high) years within 20-90: no train subject has an age in this
            band (their ages are redrawn from the rest); val and test keep every age.
        Planted options left at None draw nothing: the data and the fingerprint stay those of the defaults.
        unpaired: the train split's `target`s are CTs of *other* subjects (their own random stream, so no CT shows
            the anatomy of any MR), for unpaired translation (CycleGAN); val and test stay paired, so translations
            can still be scored against the truth. Train items then also carry `target_label` and the data set
            says `paired_truth = False` for that split.
        target_lesion_prevalence: unpaired only: lesion prevalence of the target-domain subjects (None: as the
            source's), e.g. 0.1 in MR and 0.4 in CT to provoke a translator into inventing lesions.
    """

    channels: int = 1

    def __init__(self, split: str = "train", spatial_dims: int = 2, size: int | None = None, n_train: int = 512,
                 n_val: int = 64, n_test: int = 64, lesion_prevalence: float = 0.1, noise_std: float = 0.03,
                 bias_strength: float = 0.2, seed: int = 0, lesion_radius: Sequence[float] = LESION_RADIUS,
                 lesion_prevalence_by_sex: Sequence[float] | None = None,
                 lesion_contrast_by_sex: Sequence[float] | None = None,
                 train_exclude_age: Sequence[float] | None = None,
                 unpaired: bool = False, target_lesion_prevalence: float | None = None):
        size = (64 if spatial_dims == 2 else 32) if size is None else size
        _check_args(split=split, spatial_dims=spatial_dims, size=size, n_train=n_train, n_val=n_val, n_test=n_test,
                    lesion_prevalence=lesion_prevalence, noise_std=noise_std, bias_strength=bias_strength, seed=seed,
                    lesion_radius=lesion_radius)
        planted = {"lesion_prevalence_by_sex": lesion_prevalence_by_sex,
                   "lesion_contrast_by_sex": lesion_contrast_by_sex, "train_exclude_age": train_exclude_age}
        planted = {k: [float(x) for x in v] for k, v in planted.items() if v is not None}
        _check_planted(planted)
        lesion_radius = (float(lesion_radius[0]), float(lesion_radius[1]))
        self.split, self.spatial_dims, self.size = split, int(spatial_dims), int(size)
        # Everything that changes a pixel, as plain JSON types (numpy ints would not serialize, 0 vs 0.0 would
        # change the hash); the split is left out, so all splits of one data set share the fingerprint.
        ints = {"spatial_dims": spatial_dims, "size": size, "n_train": n_train, "n_val": n_val, "n_test": n_test,
                "seed": seed}
        reals = {"lesion_prevalence": lesion_prevalence, "noise_std": noise_std, "bias_strength": bias_strength}
        self.settings = {"generator": "synthmed.phantom", "version": GENERATOR_VERSION,
                         **{k: int(v) for k, v in ints.items()}, **{k: float(v) for k, v in reals.items()}}
        if lesion_radius != LESION_RADIUS:  # only when set: default data sets keep the fingerprints they had
            self.settings["lesion_radius"] = list(lesion_radius)
        self.settings.update(planted)  # only the planted ones: default data sets keep their fingerprints
        target_prevalence = _check_unpaired(unpaired, target_lesion_prevalence, lesion_prevalence)
        if unpaired:  # likewise: paired data sets keep their fingerprints
            self.settings.update(unpaired=True, target_lesion_prevalence=target_prevalence)
        canonical = json.dumps(self.settings, sort_keys=True, separators=(",", ":"))
        self.fingerprint = hashlib.sha256(canonical.encode()).hexdigest()
        self.intensity = {"kind": "linear", "native_min": 0.0, "native_max": 1.0, "unit": "a.u."}
        self.target_intensity = {"kind": "linear", "native_min": CT_WINDOW[0], "native_max": CT_WINDOW[1],
                                 "unit": "HU"}
        n = {"train": n_train, "val": n_val, "test": n_test}[split]
        self._subjects = sample_subjects(n, spatial_dims, lesion_prevalence, seed, split, lesion_radius, planted)
        self.image, self.target = self._render(self._subjects, noise_std, bias_strength, seed)
        self.paired_truth = not (unpaired and split == "train")
        self._target_label = self._subjects["label"]
        if not self.paired_truth:  # the CTs of other subjects, drawn and rendered from the target domain's streams
            other = sample_subjects(n, spatial_dims, target_prevalence, seed, split, lesion_radius, domain=1)
            self.target = self._render(other, noise_std, bias_strength, seed, domain=1)[1]
            self._target_label = other["label"]

    def _render(self, subjects: dict, noise_std: float, bias_strength: float, seed: int,
                domain: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Renders `subjects` in chunks; returns two float32 tensors [n, 1, *spatial]."""
        shape = (self.size,) * self.spatial_dims
        axis = np.linspace(-1 + 1 / self.size, 1 - 1 / self.size, self.size, dtype=np.float32)  # pixel centres
        yxz = np.meshgrid(*(axis,) * self.spatial_dims, indexing="ij")  # [H, W(, D)]: y rows, x columns, z slices
        grid = [yxz[1].reshape(1, -1), yxz[0].reshape(1, -1),
                yxz[2].reshape(1, -1) if self.spatial_dims == 3 else np.zeros((1, 1), np.float32)]
        n = len(subjects["label"])
        rng = _streams(seed, self.split, domain)[3]
        image, target = np.empty((2, n, grid[0].size), np.float32)
        step = max(1, _CHUNK_VOXELS // grid[0].size)
        for a in range(0, n, step):
            chunk = {k: v[a:a + step] for k, v in subjects.items()}
            image[a:a + step], target[a:a + step] = render_subjects(chunk, grid, self.size, noise_std,
                                                                    bias_strength, rng)
        return torch.from_numpy(image).view(n, 1, *shape), torch.from_numpy(target).view(n, 1, *shape)

    def covariates(self) -> dict[str, np.ndarray]:
        """Per-subject `label` (int64), `sex` (int64) and `age` (float64) of the split, each [n]."""
        return {k: self._subjects[k].copy() for k in ("label", "sex", "age")}

    def target_labels(self) -> np.ndarray:
        """Lesion label (int64 [n]) of each item's `target`: the source's unless the split is unpaired."""
        return self._target_label.copy()

    def __len__(self) -> int:
        return len(self._subjects["label"])

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} subjects")
        i = i % len(self)
        s = self._subjects
        item = {"image": self.image[i].clone(), "target": self.target[i].clone(),  # clones: the cache stays intact
                "label": int(s["label"][i]), "attrs": {"sex": int(s["sex"][i]), "age": float(s["age"][i])},
                "id": f"phantom-{self.split}-{i:05d}"}
        if not self.paired_truth:
            item["target_label"] = int(self._target_label[i])
        return item


def _check_unpaired(unpaired: bool, target_lesion_prevalence: float | None, lesion_prevalence: float) -> float:
    """The target domain's prevalence; a ValueError naming the argument when it cannot apply."""
    if target_lesion_prevalence is None:
        return float(lesion_prevalence)
    if not unpaired:
        raise ValueError("PhantomDataset: target_lesion_prevalence needs unpaired=True (paired targets are the same "
                         f"subjects as the sources), got {target_lesion_prevalence!r}")
    if isinstance(target_lesion_prevalence, bool) or not 0 <= target_lesion_prevalence <= 1:
        raise ValueError(f"PhantomDataset: target_lesion_prevalence must be a number in [0, 1] or None, got "
                         f"{target_lesion_prevalence!r}")
    return float(target_lesion_prevalence)


def _check_planted(planted: dict[str, list[float]]) -> None:
    """Raises a ValueError naming the first bad planted-bias argument."""
    rules = {"lesion_prevalence_by_sex": (lambda v: len(v) == 2 and all(0 <= x <= 1 for x in v),
                                          "[p_sex0, p_sex1], each in [0, 1]"),
             "lesion_contrast_by_sex": (lambda v: len(v) == 2 and all(0 <= x <= 1 for x in v),
                                        "[c_sex0, c_sex1], each in [0, 1]"),
             "train_exclude_age": (lambda v: len(v) == 2 and 20 <= v[0] < v[1] <= 90 and v[1] - v[0] < 70,
                                   "[low, high) years with 20 <= low < high <= 90, not all of 20-90")}
    for name, value in planted.items():
        ok, want = rules[name]
        if not ok(value):
            raise ValueError(f"PhantomDataset: {name} must be {want}, got {value!r}")


def _check_args(**args) -> None:
    """Raises a ValueError naming the first bad argument."""
    is_int = lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool)
    is_real = lambda v: isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
    rules = {"split": (lambda v: v in SPLITS, f"one of {SPLITS}"),
             "spatial_dims": (lambda v: is_int(v) and v in (2, 3), "2 or 3"),
             "size": (lambda v: is_int(v) and 16 <= v <= 256, "an int in [16, 256]"),
             **{k: (lambda v: is_int(v) and v >= 1, "an int >= 1") for k in ("n_train", "n_val", "n_test")},
             "lesion_prevalence": (lambda v: is_real(v) and 0 <= v <= 1, "a number in [0, 1]"),
             "noise_std": (lambda v: is_real(v) and 0 <= v < float("inf"), "a finite number >= 0"),
             "bias_strength": (lambda v: is_real(v) and 0 <= v < 1, "a number in [0, 1)"),
             "seed": (lambda v: is_int(v) and v >= 0, "an int >= 0"),
             "lesion_radius": (lambda v: len(v) == 2 and all(is_real(r) for r in v) and 0.02 <= v[0] <= v[1] <= 0.25,
                               "[min, max] with 0.02 <= min <= max <= 0.25")}
    for name, (ok, want) in rules.items():
        if not ok(args[name]):
            raise ValueError(f"PhantomDataset: {name} must be {want}, got {args[name]!r}")
