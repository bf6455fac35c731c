"""One simple image statistic per finding, measured on the CPU-spec encoder input.

Used by ``test_phantom.py`` to show that each drawn finding is visible at 2.8 × 2.8 × 5 mm:
the statistic reads the *preprocessed* volume inside an anatomical region of the phantom
(lungs, heart surroundings, aortic wall, nodal stations...), never the lesion's own mask.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from engine.preprocess import CPU_SPEC, prepare_ct
from train.synth.lesions import hernia_centre, lymph_stations


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
        thorax = lung | _prep_mask(phantom, m["mediastinum"])
        v = img[thorax]
        return float(((v > -0.02) & (v < 0.12)).mean())
    if label in ("Pericardial effusion", "Coronary artery wall calcification"):
        heart = _prep_mask(phantom, m["heart"])
        shell = ndimage.binary_dilation(heart, iterations=2) & ~ndimage.binary_erosion(heart, iterations=1)
        if label == "Pericardial effusion":
            ring = ndimage.binary_dilation(heart, iterations=2) & ~heart
            return float(img[ring].mean())
        return float((img[shell] > 0.3).sum())
    if label == "Hiatal hernia":
        lm = phantom.landmarks
        region = _prep_mask(phantom, _sphere_mask(phantom, hernia_centre(lm, 20.0), 30.0) & ~m["lung"]
                            & ~m["airway"])
        return float((img[region] < -0.5).sum())  # gas where the mediastinum has none
    if label == "Lymphadenopathy":
        lm = phantom.landmarks
        fractions = []
        for side in (-1, 1):
            for c in lymph_stations(lm, side).values():
                region = _prep_mask(phantom, _sphere_mask(phantom, c, 22.0) & ~m["lung"])
                v = img[region]
                fractions.append(float(((v > -0.02) & (v < 0.1)).mean()) if v.size else 0.0)
        return max(fractions)
    if label in ("Emphysema", "Bronchiectasis"):
        return float((lv < -0.95).mean())
    if label == "Atelectasis":
        return float((lv > -0.2).mean())
    periphery = lung & (ndimage.distance_transform_edt(lung, sampling=(5.0, 2.8, 2.8)) <= 14.0)
    if label == "Lung nodule":
        # the densest ~1.5 cm neighbourhood of the peripheral lung: a nodule fills it, vessels do not
        dense = ((img > -0.2) & periphery).astype(np.float32)
        return float(ndimage.uniform_filter(dense, size=(3, 5, 5)).max())
    if label == "Lung opacity":
        return float(((lv > -0.7) & (lv < -0.4)).mean())
    if label == "Pulmonary fibrotic sequela":
        dense = ((img > -0.6) & periphery).astype(np.float32)
        return float(ndimage.uniform_filter(dense, size=(3, 9, 9)).max())
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
