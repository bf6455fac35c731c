"""The vocabulary every layer shares, at the bottom of the engine: the 18 findings, the mention states a
dictation can give a finding, and CT-CLIP's prompt pair.

Label names are spelled exactly as CT-RATE's label columns, in CT-RATE's order (docs/design.md §2).
Mention states follow the CheXpert labeler (docs/design.md §8). Nothing here imports anything of the
engine; label maps used only by training and evaluation (RAD-ChestCT's 16 labels) live in ``train``.
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

#: What a dictation says about a finding: the CheXpert labeler's four mention states, in the dictation
#: head's output order. A hedged mention ("possible", "cannot be excluded") is ``uncertain``: a mention,
#: so never "omitted" and never "negated".
DICTATION_CLASSES: tuple[str, ...] = ("present", "uncertain", "absent", "not mentioned")
#: The three states of dictation heads shipped before the fourth (bundles still load with them).
LEGACY_DICTATION_CLASSES: tuple[str, ...] = ("present", "absent", "not mentioned")
#: The mention-state tuples a dictation head may have, by its number of classes.
CLASS_SETS: dict[int, tuple[str, ...]] = {
    len(DICTATION_CLASSES): DICTATION_CLASSES,
    len(LEGACY_DICTATION_CLASSES): LEGACY_DICTATION_CLASSES,
}


def prompt_pair(label: str) -> tuple[str, str]:
    """CT-CLIP's zero-shot prompts for one finding: (present, not present)."""
    return f"{label} is present.", f"{label} is not present."
