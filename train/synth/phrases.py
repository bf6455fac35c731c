"""Report phrasings, in two disjoint sets: ``"A"`` for train, ``"B"`` for valid.

A validation report therefore never reuses a training sentence pattern, so a model scored on
valid cannot win by memorising templates. Slots (filled by :mod:`train.synth.reports`):
``{side}`` right/left/bilateral, ``{sides}`` "right" / "left" / "both", ``{lobes}`` lobe
names joined, ``{size}`` mm (int), ``{sev}`` mild/moderate/severe, ``{amount}``
small/moderate/large, ``{loc}`` location words, ``{n}`` a count in words, ``{kind}`` subtype
words, ``{ctr}`` cardiothoracic ratio.

Kinds of phrase per finding: ``pos`` (stated present), ``hedge`` (present but stated with
uncertainty: "likely", "cannot be excluded"; used only for findings really present, so the
mention is 1), ``short`` (compact present, used when the word budget is tight), ``neg``
(negated), ``imp`` (impression line). A sentence never names two findings unless it negates
them all, and a positive sentence never contains a negation word.
"""

from __future__ import annotations

PHRASES: dict[str, dict[str, dict[str, list[str]]]] = {"A": {}, "B": {}}

_A = PHRASES["A"]
_B = PHRASES["B"]

_A["Medical material"] = {
    "pos": ["A {kind} is seen in the {loc} region.", "There is a {kind} projecting over the {loc} region.",
            "Postoperative changes with a {kind} in the {loc} region are noted."],
    "hedge": ["Metallic density likely representing a {kind} is seen in the {loc} region."],
    "short": ["{Kind} in place."],
    "neg": [],
    "imp": ["{Kind} in place.", "Status post {kind} placement."],
}
_B["Medical material"] = {
    "pos": ["{Kind} noted at the {loc} area.", "The patient has a {kind} at the {loc} area.",
            "Metallic {kind} identified in the {loc} area."],
    "hedge": ["A metallic device in the {loc} area, probably a {kind}, is present."],
    "short": ["{Kind} present."],
    "neg": [],
    "imp": ["{Kind} noted.", "Presence of {kind}."],
}

_A["Arterial wall calcification"] = {
    "pos": ["{Sev} atherosclerotic calcifications are seen in the wall of the {loc}.",
            "Calcified atherosclerotic plaques are present in the {loc}.",
            "There are {sev} calcific atheromatous plaques along the {loc}."],
    "hedge": ["Atherosclerotic wall calcification in the {loc} is likely."],
    "short": ["Aortic atherosclerotic calcification."],
    "neg": ["No atherosclerotic calcification is seen in the aorta.", "The thoracic aorta shows no calcified plaque."],
    "imp": ["Atherosclerotic calcification of the aorta.", "Aortic atherosclerosis."],
}
_B["Arterial wall calcification"] = {
    "pos": ["The {loc} demonstrates {sev} calcified atheroma.", "{Sev} aortic wall calcifications involve the {loc}.",
            "Calcific atherosclerosis is evident in the {loc}."],
    "hedge": ["Findings are suggestive of calcified atheroma in the {loc}."],
    "short": ["Calcified aortic atheroma."],
    "neg": ["Aortic wall calcification is absent.", "There is no calcific atheroma of the aorta."],
    "imp": ["Calcified aortic atheroma.", "Aortic wall calcification."],
}

_A["Cardiomegaly"] = {
    "pos": ["The heart is enlarged with a cardiothoracic ratio of about {ctr}.", "{Sev} cardiomegaly is present.",
            "Cardiac size is increased, consistent with {sev} cardiomegaly."],
    "hedge": ["The heart appears mildly enlarged, likely {sev} cardiomegaly."],
    "short": ["Cardiomegaly."],
    "neg": ["Heart size is normal.", "No cardiomegaly.", "The heart is normal in size."],
    "imp": ["{Sev} cardiomegaly.", "Cardiomegaly."],
}
_B["Cardiomegaly"] = {
    "pos": ["{Sev} enlargement of the cardiac silhouette is observed.", "The cardiac silhouette is {sev}ly enlarged.",
            "Enlarged heart, cardiothoracic ratio approximately {ctr}."],
    "hedge": ["Cardiac enlargement is probable."],
    "short": ["Enlarged heart."],
    "neg": ["Cardiac dimensions are within normal limits.", "There is no cardiac enlargement."],
    "imp": ["Enlarged cardiac silhouette.", "Cardiac enlargement."],
}

_A["Pericardial effusion"] = {
    "pos": ["A {amount} pericardial effusion measuring up to {size} mm is present.",
            "There is {amount} pericardial effusion with a maximum thickness of {size} mm."],
    "hedge": ["A thin pericardial effusion is likely."],
    "short": ["Pericardial effusion."],
    "neg": ["No pericardial effusion.", "There is no pericardial effusion."],
    "imp": ["{Amount} pericardial effusion.", "Pericardial effusion."],
}
_B["Pericardial effusion"] = {
    "pos": ["Pericardial fluid of {size} mm thickness is observed.", "{Amount} amount of pericardial fluid is seen."],
    "hedge": ["Minimal pericardial fluid cannot be excluded."],
    "short": ["Pericardial fluid."],
    "neg": ["Pericardial fluid is absent.", "The pericardium contains no fluid."],
    "imp": ["Pericardial fluid collection.", "{Amount} pericardial fluid."],
}

_A["Coronary artery wall calcification"] = {
    "pos": ["Coronary calcifications are present in the {loc}.", "There are coronary calcifications involving the {loc}.",
            "{Sev} coronary artery calcification is noted in the {loc}."],
    "hedge": ["Punctate calcification likely in the coronary arteries."],
    "short": ["Coronary artery calcification."],
    "neg": ["No coronary artery calcification.", "The coronary arteries are free of calcification."],
    "imp": ["Coronary artery calcification.", "Coronary atherosclerosis."],
}
_B["Coronary artery wall calcification"] = {
    "pos": ["The coronary tree shows calcified plaques in the {loc}.", "{Sev} calcified coronary plaque in the {loc}.",
            "Coronary calcific deposits are identified along the {loc}."],
    "hedge": ["Probable coronary calcific plaque is seen."],
    "short": ["Calcified coronary plaques."],
    "neg": ["Coronary calcification is not seen.", "There is no coronary calcific plaque."],
    "imp": ["Calcified coronary plaques.", "Coronary artery calcific disease."],
}

_A["Hiatal hernia"] = {
    "pos": ["A {amount} hiatal hernia measuring about {size} mm is seen.", "There is a {amount} sliding hiatal hernia."],
    "hedge": ["A small hiatal hernia is likely."],
    "short": ["Hiatal hernia."],
    "neg": ["No hiatal hernia.", "There is no hiatal hernia."],
    "imp": ["{Amount} hiatal hernia.", "Hiatal hernia."],
}
_B["Hiatal hernia"] = {
    "pos": ["Herniation of the stomach through the esophageal hiatus, about {size} mm, is observed.",
            "{Amount} hiatus hernia is present."],
    "hedge": ["Findings may represent a small hiatus hernia."],
    "short": ["Hiatus hernia."],
    "neg": ["Hiatus hernia is not identified.", "There is no hiatus hernia."],
    "imp": ["Hiatus hernia.", "{Amount} hiatus hernia."],
}

_A["Lymphadenopathy"] = {
    "pos": ["Enlarged lymph nodes are seen in the {loc} region, the largest measuring {size} mm in short axis.",
            "There is lymphadenopathy in the {loc} station, up to {size} mm.",
            "Pathologically enlarged lymph nodes up to {size} mm are present at the {loc} region."],
    "hedge": ["Borderline enlarged lymph nodes up to {size} mm in the {loc} region, likely reactive."],
    "short": ["Lymphadenopathy."],
    "neg": ["No lymphadenopathy.", "No pathologically enlarged lymph nodes are seen.",
            "There is no mediastinal or hilar lymphadenopathy."],
    "imp": ["Lymphadenopathy.", "Enlarged {loc} lymph nodes."],
}
_B["Lymphadenopathy"] = {
    "pos": ["{Loc} adenopathy measuring {size} mm is observed.", "Lymph node enlargement at the {loc} level, {size} mm.",
            "Multiple enlarged lymph nodes are noted at {loc} locations, the biggest {size} mm."],
    "hedge": ["A {size} mm {loc} lymph node is probably enlarged."],
    "short": ["Adenopathy."],
    "neg": ["Lymph nodes are not enlarged.", "Mediastinal adenopathy is absent."],
    "imp": ["{Loc} adenopathy.", "Lymph node enlargement."],
}

_A["Emphysema"] = {
    "pos": ["{Sev} {kind} emphysema is seen, predominantly in the {loc}.",
            "There are {kind} emphysematous changes in the {loc}.",
            "{Kind} emphysema is present in both lungs."],
    "hedge": ["Mild emphysematous changes are likely in the {loc}."],
    "short": ["Emphysema."],
    "neg": ["No emphysema.", "There is no emphysema."],
    "imp": ["{Sev} {kind} emphysema.", "Emphysema."],
}
_B["Emphysema"] = {
    "pos": ["Emphysematous areas of {kind} type involve the {loc}.", "The lungs show {sev} emphysematous destruction.",
            "{Kind} emphysema, {sev}, in the {loc}."],
    "hedge": ["Probable early {kind} emphysema."],
    "short": ["Emphysematous changes."],
    "neg": ["Emphysematous changes are absent.", "Emphysema is not seen."],
    "imp": ["Emphysematous lung changes.", "{Kind} emphysema."],
}

_A["Atelectasis"] = {
    "pos": ["{Kind} atelectasis is seen in the {lobes}.", "There is {kind} atelectasis in the {lobes}.",
            "Atelectatic changes are present in the {lobes}."],
    "hedge": ["Subtle density in the {lobes} likely represents atelectasis."],
    "short": ["Atelectasis."],
    "neg": ["No atelectasis.", "There is no atelectasis."],
    "imp": ["Atelectasis in the {lobes}.", "{Kind} atelectasis."],
}
_B["Atelectasis"] = {
    "pos": ["The {lobes} shows {kind} atelectasis.", "Atelectatic lung is noted at the {lobes}.",
            "Areas of {kind} atelectasis involve the {lobes}."],
    "hedge": ["Atelectasis is probable at the {lobes}."],
    "short": ["Atelectatic changes."],
    "neg": ["Atelectasis is not observed.", "Atelectatic areas are absent."],
    "imp": ["{Kind} atelectasis at the {lobes}.", "Atelectatic changes."],
}

_A["Lung nodule"] = {
    "pos": ["A {size} mm {kind} nodule is seen in the {lobes}.", "There is a {kind} nodule measuring {size} mm in the {lobes}.",
            "{N} pulmonary nodules are seen, the largest measuring {size} mm in the {lobes}."],
    "hedge": ["A {size} mm nodular density in the {lobes} likely represents a nodule."],
    "short": ["{Size} mm nodule in the {lobes}."],
    "neg": ["No pulmonary nodule.", "There are no lung nodules."],
    "imp": ["{Size} mm nodule in the {lobes}.", "Pulmonary nodule, {size} mm."],
}
_B["Lung nodule"] = {
    "pos": ["{Kind} nodule of {size} mm identified at the {lobes}.", "The {lobes} contains a {size} mm {kind} nodule.",
            "{N} nodules are observed, the dominant one {size} mm at the {lobes}."],
    "hedge": ["A {size} mm focus at the {lobes}, probably a nodule."],
    "short": ["Nodule {size} mm, {lobes}."],
    "neg": ["Pulmonary nodules are not identified.", "Nodules are absent."],
    "imp": ["{Kind} nodule at the {lobes}.", "Nodule measuring {size} mm."],
}

_A["Lung opacity"] = {
    "pos": ["There are ground-glass opacities in the {lobes}.", "Patchy ground-glass opacity is seen in the {lobes}.",
            "{Sev} ground-glass opacities involve the {lobes}, the largest about {size} mm."],
    "hedge": ["Faint ground-glass opacity in the {lobes}, likely inflammatory."],
    "short": ["Ground-glass opacities."],
    "neg": ["No ground-glass opacity.", "There are no pulmonary opacities."],
    "imp": ["Ground-glass opacities in the {lobes}.", "Ground-glass opacities."],
}
_B["Lung opacity"] = {
    "pos": ["Hazy opacification is observed at the {lobes}.", "Areas of increased density are seen at the {lobes}.",
            "Ground glass densities of {sev} extent involve the {lobes}."],
    "hedge": ["Subtle opacification at the {lobes} cannot be excluded."],
    "short": ["Hazy opacification."],
    "neg": ["Opacification is absent.", "Ground glass densities are not seen."],
    "imp": ["Hazy opacification at the {lobes}.", "Increased density at the {lobes}."],
}

_A["Pulmonary fibrotic sequela"] = {
    "pos": ["Fibrotic sequelae are seen in the {lobes}.", "There are fibrotic bands and scarring in the {lobes}.",
            "Linear fibrotic changes are noted in the {lobes}."],
    "hedge": ["Linear densities in the {lobes} likely represent fibrotic sequelae."],
    "short": ["Fibrotic sequelae."],
    "neg": ["No fibrotic changes.", "There is no pulmonary fibrosis."],
    "imp": ["Fibrotic sequelae in the {lobes}.", "Sequelae of fibrosis."],
}
_B["Pulmonary fibrotic sequela"] = {
    "pos": ["Parenchymal scarring is observed at the {lobes}.", "The {lobes} shows fibrotic strands.",
            "Sequelae with fibrotic scarring involve the {lobes}."],
    "hedge": ["Strands at the {lobes}, probably fibrotic scarring."],
    "short": ["Fibrotic scarring."],
    "neg": ["Fibrotic scarring is not observed.", "Fibrosis is absent."],
    "imp": ["Parenchymal scarring at the {lobes}.", "Fibrotic sequelae."],
}

_A["Pleural effusion"] = {
    "pos": ["There is a {amount} {side} pleural effusion measuring {size} mm in thickness.",
            "A {amount} {side} pleural effusion is seen.", "{Side} pleural effusion is present, up to {size} mm."],
    "hedge": ["A trace {side} pleural effusion is likely."],
    "short": ["{Side} pleural effusion."],
    "neg": ["No pleural effusion.", "There is no pleural effusion."],
    "imp": ["{Amount} {side} pleural effusion.", "{Side} pleural effusion."],
}
_B["Pleural effusion"] = {
    "pos": ["Pleural fluid is observed on the {sides} side, {size} mm thick.",
            "{Amount} pleural fluid collection on the {sides} side.",
            "The {sides} pleural space contains fluid up to {size} mm."],
    "hedge": ["Minimal pleural fluid on the {sides} side cannot be excluded."],
    "short": ["Pleural fluid, {sides} side."],
    "neg": ["Pleural fluid is absent.", "The pleural spaces contain no fluid."],
    "imp": ["Pleural fluid on the {sides} side.", "{Amount} pleural fluid."],
}

_A["Mosaic attenuation pattern"] = {
    "pos": ["A mosaic attenuation pattern is seen in the {loc}.", "There is mosaic attenuation in both lungs."],
    "hedge": ["Mosaic attenuation is likely, possibly from small airway disease."],
    "short": ["Mosaic attenuation."],
    "neg": ["No mosaic attenuation.", "There is no mosaic attenuation pattern."],
    "imp": ["Mosaic attenuation pattern.", "Mosaic attenuation in the {loc}."],
}
_B["Mosaic attenuation pattern"] = {
    "pos": ["The lung parenchyma shows a mosaic pattern of attenuation.",
            "Mosaic perfusion-type attenuation differences are observed in the {loc}."],
    "hedge": ["Heterogeneous mosaic pattern is probable."],
    "short": ["Mosaic pattern."],
    "neg": ["A mosaic pattern is absent.", "Mosaic pattern is not seen."],
    "imp": ["Mosaic pattern of attenuation.", "Mosaic attenuation."],
}

_A["Peribronchial thickening"] = {
    "pos": ["Peribronchial thickening is seen in the {loc}.", "There is {sev} peribronchial thickening."],
    "hedge": ["Mild peribronchial thickening is likely."],
    "short": ["Peribronchial thickening."],
    "neg": ["No peribronchial thickening.", "There is no peribronchial thickening."],
    "imp": ["Peribronchial thickening.", "{Sev} peribronchial thickening."],
}
_B["Peribronchial thickening"] = {
    "pos": ["Bronchial wall thickening is observed in the {loc}.", "{Sev} bronchial wall thickening is present."],
    "hedge": ["Probable bronchial wall thickening."],
    "short": ["Bronchial wall thickening."],
    "neg": ["Bronchial wall thickening is absent.", "Bronchial walls are not thickened."],
    "imp": ["Bronchial wall thickening.", "Thickened bronchial walls."],
}

_A["Consolidation"] = {
    "pos": ["There is consolidation with air bronchograms in the {lobes}.",
            "Consolidation is seen in the {lobes}.", "{Sev} consolidation involves the {lobes}."],
    "hedge": ["Consolidation in the {lobes} is likely, possibly pneumonia."],
    "short": ["Consolidation in the {lobes}."],
    "neg": ["No consolidation.", "There is no consolidation."],
    "imp": ["Consolidation in the {lobes}.", "Consolidation, likely pneumonia."],
}
_B["Consolidation"] = {
    "pos": ["Consolidative changes are observed at the {lobes}.", "The {lobes} is consolidated with air bronchograms.",
            "Airspace consolidation at the {lobes}."],
    "hedge": ["Consolidative change at the {lobes} cannot be excluded."],
    "short": ["Consolidated {lobes}."],
    "neg": ["Consolidation is absent.", "Consolidative changes are not seen."],
    "imp": ["Consolidative changes at the {lobes}.", "Airspace consolidation."],
}

_A["Bronchiectasis"] = {
    "pos": ["{Kind} bronchiectasis is seen in the {lobes}.", "There is bronchiectasis in the {lobes}.",
            "Bronchiectatic changes are present in the {lobes}."],
    "hedge": ["Mild bronchiectasis is likely in the {lobes}."],
    "short": ["Bronchiectasis."],
    "neg": ["No bronchiectasis.", "There is no bronchiectasis."],
    "imp": ["Bronchiectasis in the {lobes}.", "{Kind} bronchiectasis."],
}
_B["Bronchiectasis"] = {
    "pos": ["Dilated bronchi of {kind} type are observed at the {lobes}.", "The {lobes} shows bronchiectatic airways.",
            "{Kind} bronchial dilatation is noted at the {lobes}."],
    "hedge": ["Probable bronchial dilatation at the {lobes}."],
    "short": ["Dilated bronchi."],
    "neg": ["Bronchial dilatation is absent.", "Bronchiectasis is not seen."],
    "imp": ["Bronchial dilatation at the {lobes}.", "Bronchiectatic airways."],
}

_A["Interlobular septal thickening"] = {
    "pos": ["Interlobular septal thickening is seen in the {loc}.", "There is {sev} interlobular septal thickening."],
    "hedge": ["Interlobular septal thickening is likely in the {loc}."],
    "short": ["Interlobular septal thickening."],
    "neg": ["No interlobular septal thickening.", "There is no septal thickening."],
    "imp": ["Interlobular septal thickening.", "Septal thickening in the {loc}."],
}
_B["Interlobular septal thickening"] = {
    "pos": ["Thickened interlobular septa are observed, {loc}.", "Septal lines are prominent in the {loc}."],
    "hedge": ["Probable thickened interlobular septa."],
    "short": ["Thickened septa."],
    "neg": ["Interlobular septa are not thickened.", "Septal thickening is absent."],
    "imp": ["Thickened interlobular septa.", "Prominent septal lines."],
}

#: Negations that cover two findings in one sentence (both must be absent).
COMBINED_NEG = {
    "A": {("Pleural effusion", "Pericardial effusion"): ["No pleural or pericardial effusion."],
          ("Consolidation", "Lung opacity"): ["No consolidation or ground-glass opacity."],
          ("Arterial wall calcification", "Coronary artery wall calcification"):
              ["No calcification of the aorta or coronary arteries."]},
    "B": {("Pleural effusion", "Pericardial effusion"): ["Pleural and pericardial fluid are absent."],
          ("Consolidation", "Lung opacity"): ["Consolidation and opacification are not seen."],
          ("Arterial wall calcification", "Coronary artery wall calcification"):
              ["Aortic and coronary calcifications are absent."]},
}

#: Normal statements that name no finding; each lists findings that must be absent to say it.
NORMALS = {
    "A": [("Trachea and both main bronchi are patent.", []),
          ("The thoracic aorta is of normal calibre.", []),
          ("Mediastinal structures are otherwise unremarkable.", ["Lymphadenopathy", "Hiatal hernia"]),
          ("The visualised upper abdominal organs are unremarkable.", []),
          ("Bony structures show degenerative changes only.", []),
          ("Thyroid gland is unremarkable.", [])],
    "B": [("Central airways are open.", []),
          ("Main pulmonary artery diameter is within normal range.", []),
          ("Bones of the thorax appear intact.", []),
          ("The imaged portions of the liver and spleen appear intact.", []),
          ("Soft tissues of the chest wall appear intact.", ["Medical material"])],
}

NO_ACUTE = {"A": ["No acute cardiopulmonary abnormality.", "No significant abnormality in the chest."],
            "B": ["Chest CT within normal limits.", "Unremarkable chest CT."]}

CLINICAL = {
    "A": ["Cough.", "Shortness of breath.", "Follow-up of pulmonary nodule.", "Fever and cough.", "Chest pain.",
          "Malignancy staging.", "Dyspnea.", "Not given."],
    "B": ["Persistent cough for two weeks.", "Breathlessness on exertion.", "Known lung nodule, control.",
          "Suspected pneumonia.", "Screening.", "Weight loss.", "Not provided."],
}

TECHNIQUE = {
    "A": ["{contrast} chest CT was obtained in the axial plane with {thick} mm slice thickness.",
          "Axial {contrast_l} images of the thorax were acquired at {thick} mm."],
    "B": ["Thorax CT, {contrast_l}, reconstructed at {thick} mm slices.",
          "Multislice {contrast_l} CT of the chest, {thick} mm sections."],
}
