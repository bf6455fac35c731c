"""One simple image statistic per finding, measured on the CPU-spec encoder input.

Used by ``test_phantom.py`` to show that each drawn finding is visible at 2.8 × 2.8 × 5 mm:
the statistic reads the *preprocessed* volume inside an anatomical region of the phantom
(lungs, heart surroundings, aortic wall, nodal stations...), never the lesion's own mask.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from engine.preprocess import CPU_SPEC, prepare_ct
from train.synth.lesions import hernia_centre


def _prep_mask(phantom, mask: np.ndarray) -> np.ndarray:
    vol = phantom.volume.replace(array=(mask.astype(np.int16) * 1000), metadata={}, warnings=[])
    return prepare_ct(vol, CPU_SPEC) > 0.5


def _sphere_mask(phantom, centre, radius_mm: float) -> np.ndarray:
    shape = phantom.volume.shape
    sp = np.asarray(phantom.volume.spacing)
    c = phantom.body_to_index(centre)
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    d2 = ((zz - c[0]) * sp[0]) ** 2 + ((yy - c[1]) * sp[1]) ** 2 + ((xx - c[2]) * sp[2]) ** 2
    return d2 <= radius_mm ** 2


def _fat_local_mean(img: np.ndarray, fat: np.ndarray) -> np.ndarray:
    """3 x 3 in-plane mean of ``img`` over the fat voxels only, so that single noisy voxels and
    the neighbouring vessels do not count."""
    f = fat.astype(np.float32)
    return ndimage.uniform_filter(img * f, size=(1, 3, 3)) / np.maximum(ndimage.uniform_filter(f, (1, 3, 3)), 1e-3)


def _blobness(img: np.ndarray, lung: np.ndarray, region: np.ndarray, sigmas_mm=(3.0, 4.5, 6.5, 9.0)) -> float:
    """Strongest bright blob in the lungs: the scale-normalised Hessian's least negative eigenvalue
    (negated), maximised over the lung voxels of ``region`` and over scales. A nodule is curved along all three axes;
    vessels (tubes), fissures and the pleura (sheets) are flat along at least one, so they score ~0.
    The chest wall and mediastinum are replaced by the median lung value first."""
    fill = np.where(lung, img, np.float32(np.median(img[lung]))).astype(np.float32)
    sp = np.asarray(CPU_SPEC.spacing, float)
    inner = ndimage.binary_erosion(lung, iterations=1) & region
    best = 0.0
    for s_mm in sigmas_mm:
        sig = s_mm / sp
        h = np.empty((int(inner.sum()), 3, 3), np.float32)
        for a in range(3):
            for b in range(a, 3):
                order = [0, 0, 0]
                order[a] += 1
                order[b] += 1
                d = ndimage.gaussian_filter(fill, sig, order=order)[inner] * (s_mm ** 2 / (sp[a] * sp[b]))
                h[:, a, b] = d
                h[:, b, a] = d
        top = np.linalg.eigvalsh(h)[:, -1]  # least negative eigenvalue
        best = max(best, float(-top.min()))
    return best


def finding_stat(label: str, phantom) -> float:
    """The statistic for ``label`` (larger = more of the finding); needs ``with_masks=True``."""
    img = prepare_ct(phantom.volume, CPU_SPEC)
    m = phantom.masks
    lung = _prep_mask(phantom, m["lung"])
    ndimage.binary_erosion(lung, iterations=1)
    lv = img[lung]
    if label == "Medical material":
        return float((img >= 0.95).sum())
    if label == "Arterial wall calcification":
        aorta = _prep_mask(phantom, m["aorta"])
        return float((img[ndimage.binary_dilation(aorta, iterations=1)] > 0.4).sum())
    if label in ("Cardiomegaly",):
        # share of the thorax that is heart-dense: myocardium and blood, unenhanced or with contrast
        # (up to ~600 HU), so the contrast phase does not move a normal heart out of the range
        thorax = lung | _prep_mask(phantom, m["mediastinum"])
        v = img[thorax]
        return float(((v > -0.02) & (v < 0.6)).mean())
    if label in ("Pericardial effusion", "Coronary artery wall calcification"):
        heart = _prep_mask(phantom, m["heart"])
        shell = ndimage.binary_dilation(heart, iterations=2) & ~ndimage.binary_erosion(heart, iterations=1)
        if label == "Pericardial effusion":
            ring = ndimage.binary_dilation(heart, iterations=2) & ~heart
            return float(img[ring].mean())
        return float((img[shell] > 0.3).sum())
    if label == "Hiatal hernia":
        # behind the heart, above the hiatus: a herniated stomach puts gas and fluid/wall where the
        # normal mediastinum has fat
        fat = _prep_mask(phantom, m["mediastinal_fat"])
        sphere = _prep_mask(phantom, _sphere_mask(phantom, hernia_centre(phantom.landmarks, 20.0), 35.0))
        region = sphere & ndimage.binary_erosion(fat, iterations=1)
        soft = float((_fat_local_mean(img, fat)[region] > -0.03).sum())
        # gas outside the normal lungs and airways (one voxel in from them)
        open_air = ndimage.binary_dilation(_prep_mask(phantom, m["lung"] | m["airway"]), iterations=1)
        gas = float((img[sphere & ~open_air] < -0.5).sum())
        return soft + gas
    if label == "Lymphadenopathy":
        # enlarged nodes replace the normal mediastinal fat: soft-tissue voxels well inside it
        fat = _prep_mask(phantom, m["mediastinal_fat"])
        inner = ndimage.binary_erosion(fat, iterations=1)
        return float((_fat_local_mean(img, fat)[inner] > -0.03).sum())
    if label in ("Emphysema", "Bronchiectasis"):
        return float((lv < -0.95).mean())
    if label == "Atelectasis":
        return float((lv > -0.2).mean())
    if label == "Lung nodule":
        # the lung away from the hila (nodules are drawn >= 30 mm from the mediastinum)
        away = ndimage.distance_transform_edt(~_prep_mask(phantom, m["mediastinum"]), sampling=CPU_SPEC.spacing) > 20
        return _blobness(img, lung, away)
    if label == "Lung opacity":
        # ground glass is a patch: the densest 3 x 3 x 3 neighbourhood (15 x 8.4 x 8.4 mm) of
        # ground-glass-range voxels inside the lung; vessels and fissures only fill part of one
        ggo = ((img > -0.7) & (img < -0.4)).astype(np.float32)
        inner = ndimage.binary_erosion(lung, iterations=1)
        return float(ndimage.uniform_filter(ggo, 3)[inner].max())
    if label == "Pulmonary fibrotic sequela":
        # reticulation: intermediate densities in the subpleural band (along the costal pleura, away
        # from the heart border and the diaphragm) of the worst lobe
        inner = ndimage.binary_erosion(lung, iterations=1)
        cavity = _prep_mask(phantom, m["cavity"])
        band = inner & (ndimage.distance_transform_edt(cavity, sampling=CPU_SPEC.spacing) <= 15.0)
        fractions = []
        for code in (1, 3, 4, 5):  # the middle lobe's band is mostly fissure and heart border
            v = img[band & _prep_mask(phantom, m["lobes"] == code)]
            fractions.append(float(((v > -0.75) & (v < -0.1)).mean()) if v.size else 0.0)
        return max(fractions)
    if label == "Pleural effusion":
        return float(((lv > -0.05) & (lv < 0.1)).mean())
    if label == "Mosaic attenuation pattern":
        return float(lv[lv < -0.6].std())
    if label == "Peribronchial thickening":
        air = _prep_mask(phantom, m["airway"] & ~m["trachea"])
        ring = ndimage.binary_dilation(air, iterations=1) & ~air & lung
        return float(img[ring].mean())
    if label == "Consolidation":
        return float((lv > -0.15).mean())
    if label == "Interlobular septal thickening":
        return float(((lv > -0.7) & (lv < -0.2)).mean())
    raise KeyError(label)
