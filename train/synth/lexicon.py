"""What radiologists call each of the 18 findings, split by wording between train, valid and test.

Every list is keyed by split part: ``core`` (the canonical names every split uses: "pleural effusion",
"cardiomegaly"), ``train``, ``valid`` and ``test``. A split draws from ``core`` plus its own part, so the
validation and test reports use synonyms that training never hears (``docs/report-grammar.md``).

A term is ``"k:text"`` with ``k`` its grammatical kind: ``a`` a countable singular ("a pleural effusion",
plural "pleural effusions"), ``pl`` a plural ("enlarged lymph nodes"), ``m`` a mass noun ("pleural fluid",
"cardiomegaly"). Terms may carry slots of the instance (``{kind}``, ``{sev}``...); those are only used for
findings that are present, and a negation uses the slot-free terms. Vocabulary facts follow the Fleischner
Society glossary of thoracic CT terms and public labeler rule sets (CheXpert, NegBio, RadGraph); no code.

Per finding:

* ``terms``: the noun phrases;
* ``pre``: premodifiers of a present finding (``{sev}``, ``{amount}``, ``{side}``, fixed words);
* ``where``: which location slot a present finding takes (``lobes``, ``loc`` or ``None``);
* ``sized``: ``"always"`` / ``"maybe"``: a present finding's phrase carries its size in mm;
* ``own``: finding-specific whole sentences by state ("The heart is normal in size." settles cardiomegaly
  as absent; "The heart is enlarged." states it present).
"""

from __future__ import annotations

PARTS = ("core", "train", "valid", "test")


def L(core=(), train=(), valid=(), test=()) -> dict[str, list[str]]:  # noqa: N802 - a table constructor
    return {"core": list(core), "train": list(train), "valid": list(valid), "test": list(test)}


FINDINGS: dict[str, dict] = {}

FINDINGS["Medical material"] = {
    "terms": L(["a:{kind}"],
               ["a:implanted {kind}", "m:postoperative material of a {kind}", "a:{kind} in place"],
               ["a:indwelling {kind}"],
               ["m:surgical material from a {kind}", "a:{kind} in situ"]),
    # what is negated when no device is there (a device has no name then)
    "neg_terms": L([], ["pl:implanted devices", "pl:lines or tubes"], ["pl:support devices"],
                   ["m:foreign material", "pl:indwelling catheters"]),
    "pre": L([""], [""], [""], [""]),
    "where": "loc",
    "own": {"present": L([], ["Status post {kind} placement."], ["Patient has a {kind}."],
                         ["The patient is status post {kind} insertion."])},
}

FINDINGS["Arterial wall calcification"] = {
    "terms": L(["pl:atherosclerotic calcifications"],
               ["m:aortic wall calcification", "pl:calcified atherosclerotic plaques", "m:calcific atherosclerosis",
                "m:aortic atherosclerosis", "m:mural calcification of the aorta"],
               ["pl:calcific aortic plaques"],
               ["m:calcified atheroma", "m:atheromatous calcification", "pl:calcified aortic plaques",
                "m:aortic atherosclerotic disease"]),
    "neg_terms": L(["m:aortic calcification"], ["m:calcified plaque in the aorta"], [],
                   ["m:atheromatous calcification of the aorta"]),
    "pre": L(["", "{sev}"], ["scattered"], ["extensive"], ["dense"]),
    "where": "loc",
    "own": {"absent": L([], ["The thoracic aorta shows no calcified plaque."], ["The aortic wall is smooth."],
                        ["The aorta is free of atherosclerotic calcification."])},
}

FINDINGS["Cardiomegaly"] = {
    "terms": L(["m:cardiomegaly"],
               ["a:enlarged heart", "m:cardiac enlargement", "a:enlarged cardiac silhouette", "m:increased heart size"],
               ["m:enlargement of the heart"],
               ["a:large heart", "m:increased cardiac size", "m:cardiac chamber enlargement"]),
    "pre": L(["", "{sev}"], [""], [""], [""]),
    "where": None,
    "own": {"present": L([], ["The heart is {sev}ly enlarged.", "The heart is enlarged, cardiothoracic ratio {ctr}."],
                         ["The cardiac silhouette is enlarged."],
                         ["Heart size is increased.", "The heart is large, with a cardiothoracic ratio of {ctr}."]),
            "absent": L([], ["The heart is normal in size.", "Heart size is normal."],
                        ["Cardiac dimensions are within normal limits."],
                        ["Heart size is within normal limits.", "The heart is not enlarged."])},
}

FINDINGS["Pericardial effusion"] = {
    "terms": L(["a:pericardial effusion"],
               ["m:pericardial fluid", "a:pericardial fluid collection", "m:fluid in the pericardial sac",
                "a:effusion in the pericardium"],
               ["m:pericardial fluid accumulation"],
               ["m:fluid within the pericardium", "a:pericardial collection", "m:fluid around the heart"]),
    "pre": L(["", "{amount}"], ["thin"], ["minimal"], ["trace"]),
    "sized": "maybe",
    "where": None,
    "own": {"absent": L([], ["The pericardium is unremarkable."], ["The pericardium appears normal."],
                        ["The pericardial sac is unremarkable."])},
}

FINDINGS["Coronary artery wall calcification"] = {
    "terms": L(["m:coronary artery calcification"],
               ["pl:coronary calcifications", "m:coronary atherosclerosis", "pl:calcified coronary plaques",
                "m:coronary artery wall calcification", "m:calcific coronary disease"],
               ["pl:coronary calcific deposits"],
               ["pl:calcified plaques in the coronary arteries", "m:coronary arterial calcification",
                "m:calcification of the coronary arteries", "m:coronary calcific atherosclerosis"]),
    "pre": L(["", "{sev}"], ["scattered"], ["punctate"], ["dense"]),
    "where": "loc",
    "own": {"absent": L([], ["The coronary arteries are free of calcification."],
                        ["The coronary arteries appear normal."],
                        ["The coronary arteries show no calcified plaque."])},
}

FINDINGS["Hiatal hernia"] = {
    "terms": L(["a:hiatal hernia"],
               ["a:sliding hiatal hernia", "a:hiatus hernia", "m:herniation of the stomach through the hiatus"],
               ["m:gastric herniation through the esophageal hiatus"],
               ["a:hernia through the esophageal hiatus", "m:hiatal herniation",
                "m:herniation of the gastric fundus into the chest"]),
    "pre": L(["", "{amount}"], [""], [""], [""]),
    "sized": "maybe",
    "where": None,
    "own": {"absent": L([], ["The esophageal hiatus is normal."], [], ["The hiatus is unremarkable."])},
}

FINDINGS["Lymphadenopathy"] = {
    "terms": L(["m:lymphadenopathy"],
               ["pl:enlarged lymph nodes", "pl:pathologically enlarged lymph nodes", "m:adenopathy",
                "m:lymph node enlargement", "m:mediastinal adenopathy"],
               ["m:nodal enlargement"],
               ["pl:enlarged nodes", "pl:lymph nodes of increased size", "pl:bulky lymph nodes",
                "pl:enlarged mediastinal nodes"]),
    "pre": L([""], [""], [""], [""]),
    "sized": "maybe",
    "where": "loc",
    "own": {"absent": L([], ["Mediastinal and hilar lymph nodes are within normal size limits."],
                        ["Lymph nodes are not enlarged."], ["Lymph nodes are of normal size."])},
}

FINDINGS["Emphysema"] = {
    "terms": L(["m:emphysema"],
               ["m:{kind} emphysema", "pl:emphysematous changes", "m:emphysematous destruction",
                "pl:areas of low attenuation consistent with emphysema"],
               ["pl:emphysematous areas"],
               ["m:pulmonary emphysema", "pl:centrilobular lucencies", "m:emphysematous lung disease",
                "pl:bullous changes"]),
    "pre": L(["", "{sev}"], [""], [""], [""]),
    "where": "loc",
}

FINDINGS["Atelectasis"] = {
    "terms": L(["m:atelectasis"],
               ["pl:atelectatic changes", "m:{kind} atelectasis", "m:subsegmental atelectasis", "pl:atelectatic bands",
                "m:volume loss"],
               ["m:atelectatic lung"],
               ["m:plate-like atelectasis", "m:partial collapse", "m:discoid atelectasis",
                "m:compressive atelectasis"]),
    "pre": L([""], [""], [""], [""]),
    "where": "lobes",
}

FINDINGS["Lung nodule"] = {
    "terms": L(["a:pulmonary nodule"],
               ["a:lung nodule", "a:{kind} nodule", "a:nodule", "a:nodular lesion"],
               ["a:nodular opacity"],
               ["a:parenchymal nodule", "a:nodular density", "a:rounded nodular lesion"]),
    "pre": L([""], [""], [""], [""]),
    "where": "lobes",
    "sized": "always",
    "own": {"present": L([], ["{N} pulmonary nodules are seen, the largest measuring {size} mm in the {lobes}."],
                         ["{N} nodules are observed, the dominant one {size} mm in the {lobes}."],
                         ["There are {n} nodules, the biggest {size} mm, in the {lobes}."])},
}

FINDINGS["Lung opacity"] = {
    "terms": L(["pl:ground-glass opacities"],
               ["m:ground-glass opacity", "pl:pulmonary opacities", "m:hazy opacification",
                "pl:areas of increased attenuation", "pl:patchy opacities", "pl:tree-in-bud opacities"],
               ["pl:ground glass densities"],
               ["m:ground-glass attenuation", "pl:hazy densities", "pl:areas of ground-glass change",
                "m:increased lung density"]),
    "pre": L(["", "{sev}"], ["faint"], ["subtle"], ["patchy"]),
    "where": "lobes",
}

FINDINGS["Pulmonary fibrotic sequela"] = {
    "terms": L(["pl:fibrotic changes"],
               ["pl:fibrotic sequelae", "pl:fibrotic bands", "m:parenchymal scarring", "m:honeycombing",
                "pl:fibroatelectatic changes"],
               ["m:scar tissue"],
               ["m:reticulation", "pl:post-inflammatory scars", "m:pulmonary fibrosis", "pl:fibrotic strands"]),
    "pre": L(["", "{sev}"], [""], [""], [""]),
    "where": "lobes",
}

FINDINGS["Pleural effusion"] = {
    "terms": L(["a:pleural effusion"],
               ["m:pleural fluid", "a:pleural fluid collection", "m:fluid in the pleural space"],
               ["a:pleural collection"],
               ["a:hydrothorax", "m:fluid in the pleural cavity", "m:pleural fluid accumulation"]),
    "pre": L(["", "{side}", "{amount} {side}", "{amount}"], [""], [""], [""]),
    "sized": "maybe",
    "where": None,
    "own": {"absent": L([], ["The pleural spaces are clear."], ["Pleural spaces are free of fluid."],
                        ["Both pleural spaces are unremarkable."])},
}

FINDINGS["Mosaic attenuation pattern"] = {
    "terms": L(["m:mosaic attenuation"],
               ["m:mosaic attenuation pattern", "m:mosaic perfusion", "m:heterogeneous lung attenuation"],
               ["m:patchy lung attenuation"],
               ["m:mosaic pattern", "m:geographic variation in lung attenuation", "m:mosaic oligemia"]),
    "pre": L([""], [""], [""], [""]),
    "where": "loc",
}

FINDINGS["Peribronchial thickening"] = {
    "terms": L(["m:peribronchial thickening"],
               ["m:bronchial wall thickening", "pl:thickened bronchial walls", "m:peribronchial cuffing"],
               ["pl:thick-walled bronchi"],
               ["m:peribronchovascular thickening", "m:thickening of the bronchial walls", "m:airway wall thickening"]),
    "pre": L(["", "{sev}"], [""], [""], [""]),
    "where": "lobes",
}

FINDINGS["Consolidation"] = {
    "terms": L(["m:consolidation"],
               ["m:air-space consolidation", "pl:consolidative opacities", "m:dense opacification",
                "pl:areas of consolidation", "m:air-space disease"],
               ["m:lung consolidation"],
               ["m:alveolar consolidation", "m:air-space opacification", "m:consolidated lung",
                "pl:consolidations with air bronchograms"]),
    "pre": L([""], [""], [""], [""]),
    "where": "lobes",
}

FINDINGS["Bronchiectasis"] = {
    "terms": L(["m:bronchiectasis"],
               ["pl:dilated bronchi", "m:bronchial dilatation", "pl:bronchiectatic airways", "m:{kind} bronchiectasis"],
               ["m:bronchial ectasia"],
               ["pl:ectatic bronchi", "m:airway dilatation", "pl:bronchi wider than the adjacent arteries",
                "m:traction bronchiectasis"]),
    "pre": L([""], [""], [""], [""]),
    "where": "lobes",
}

FINDINGS["Interlobular septal thickening"] = {
    "terms": L(["m:interlobular septal thickening"],
               ["m:septal thickening", "pl:thickened interlobular septa", "pl:septal lines", "m:smooth septal thickening"],
               ["pl:prominent septal lines"],
               ["pl:Kerley B lines", "m:thickening of the interlobular septa", "pl:thickened septa"]),
    "pre": L(["", "{sev}"], [""], [""], [""]),
    "where": "loc",
}

#: Normal statements that settle several findings as absent at once (and what they settle).
MULTI_NORMALS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "core": [],
    "train": [("The lungs are clear.", ("Consolidation", "Lung opacity")),
              ("The heart and pericardium are unremarkable.", ("Cardiomegaly", "Pericardial effusion"))],
    "valid": [("Lung fields are clear.", ("Consolidation", "Lung opacity"))],
    "test": [("The lung parenchyma is clear.", ("Consolidation", "Lung opacity")),
             ("Heart and pericardium appear normal.", ("Cardiomegaly", "Pericardial effusion"))],
}

#: Statements that settle nothing among the 18 (normal anatomy, other organs).
DISTRACTORS = {
    "core": [],
    "train": ["Trachea and both main bronchi are patent.", "The thoracic aorta is of normal calibre.",
              "The visualised upper abdominal organs are unremarkable.", "Bony structures show degenerative changes only.",
              "Thyroid gland is unremarkable."],
    "valid": ["Central airways are open.", "Main pulmonary artery diameter is within normal range.",
              "Bones of the thorax appear intact."],
    "test": ["The airways are patent.", "The imaged liver and spleen are unremarkable.",
             "Osseous structures are intact.", "The great vessels are normal in calibre."],
}


def part_items(table: dict[str, list], wording: str) -> list:
    """``core`` + the wording's own part (``wording`` is ``train``, ``valid`` or ``test``)."""
    if wording not in PARTS[1:]:
        raise ValueError(f"wording must be train, valid or test, got {wording!r}")
    return [*table.get("core", []), *table.get(wording, [])]
