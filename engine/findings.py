"""The 18 CT-RATE findings and their zero-shot prompts.

Label names are spelled exactly as CT-RATE's label columns, in CT-RATE's order.
Zero-shot scoring (the one implementation, also used by ``train.metrics``) lives here too.
"""

from __future__ import annotations

LABELS: tuple[str, ...] = (
    "Medical material",
    "Arterial wall calcification",
    "Cardiomegaly",
    "Pericardial effusion",
    "Coronary artery wall calcification",
    "Hiatal hernia",
    "Lymphadenopathy",
    "Emphysema",
    "Atelectasis",
    "Lung nodule",
    "Lung opacity",
    "Pulmonary fibrotic sequela",
    "Pleural effusion",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Consolidation",
    "Bronchiectasis",
    "Interlobular septal thickening",
)

#: RAD-ChestCT-style external sets use 16 labels: no mosaic attenuation, and the two
#: calcifications merged (by max) into one.
RAD_CHESTCT_DROP = ("Mosaic attenuation pattern",)
RAD_CHESTCT_MERGE = {"Calcification": ("Arterial wall calcification", "Coronary artery wall calcification")}


def prompt_pair(label: str) -> tuple[str, str]:
    """CT-CLIP's zero-shot prompts for one finding: (present, not present)."""
    return f"{label} is present.", f"{label} is not present."
