"""The model card every exported bundle carries (``README.md`` in the bundle, as Hugging Face and MONAI
bundles do): what the model is for, that it is not a medical device, what it was trained on, how it
scored, and its limits. Written from the manifest alone, so a card always matches its bundle's numbers;
the card is documentation and is not part of the bundle's hash.
"""

from __future__ import annotations

from typing import Any

CARD_NAME = "README.md"


def _pct(value: Any) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{value:.3f}"


def _metric(entry: Any) -> str:
    """``{"value": v, "ci": [lo, hi]}`` → ``v [lo, hi]``; a bare number as it is."""
    if isinstance(entry, dict) and "value" in entry:
        ci = entry.get("ci") or []
        return _pct(entry["value"]) + (f" [{_pct(ci[0])}, {_pct(ci[1])}]" if len(ci) == 2 else "")
    return _pct(entry)


def _seeds(seeds: Any) -> str:
    if isinstance(seeds, dict):
        return ", ".join(f"{k} {v}" for k, v in seeds.items()) or "-"
    return "?" if seeds is None else str(seeds)


def _evaluation_lines(evaluation: dict[str, Any]) -> list[str]:
    groups = evaluation.get("groups") or {}
    if not groups:
        return ["No evaluation was stored with this bundle: treat every output as unmeasured."]
    lines = [f"Split `{evaluation.get('split', '?')}`, {evaluation.get('n_studies', '?')} studies, "
             f"95 % bootstrap CIs over {evaluation.get('n_boot', '?')} draws; zero-shot findings by CT-CLIP's "
             "protocol (macro mean over the findings).", ""]
    for group, body in groups.items():
        systems = body.get("systems") or {}
        lines += [f"**{group}** (n = {body.get('n', '?')})", "",
                  "| system | AUROC | F1 | accuracy | precision | dictation macro F1 |", "|---|---|---|---|---|---|"]
        for name, s in systems.items():
            lines.append(f"| {name} | {_metric(s.get('auroc'))} | {_metric(s.get('f1'))} | "
                         f"{_metric(s.get('accuracy'))} | {_metric(s.get('precision'))} | "
                         f"{_pct(s.get('dictation_macro_f1'))} |")
        lines.append("")
    return lines


def model_card(manifest: dict[str, Any]) -> str:
    """The Markdown model card of a bundle manifest (the ``bundle.json`` object)."""
    name = manifest.get("name") or "unnamed bundle"
    prov = manifest.get("provenance") or {}
    thresholds = manifest.get("thresholds") or {}
    auroc = thresholds.get("auroc") or {}
    from engine.findings import RELIABLE_AUROC

    weak = sorted(label for label in manifest.get("labels", []) if auroc.get(label, 0.0) < RELIABLE_AUROC)
    head = manifest.get("dictation_head")
    reader = (manifest.get("dictation_reader") or {}).get("choice", "speech")
    statistic = thresholds.get("auroc_statistic", "point") if auroc else None
    lines = [
        f"# SpeechCT model bundle: {name}",
        "",
        "## Intended use",
        "",
        "Research and demonstration of a voice-native radiology assistant: ranking the 18 CT-RATE chest CT "
        "findings of a study zero-shot, reading what a spoken report says about each finding, flagging "
        "where image and dictation disagree, and finding similar studies. Outputs are suggestions for a "
        "reader who looks at the images; they never replace that reading.",
        "",
        "**Not a medical device.** This model has no regulatory clearance or approval (no CE mark, no FDA "
        "clearance) and must not be used for diagnosis, triage or any clinical decision.",
        "",
        "## Model",
        "",
        f"- CT encoder: `{(manifest.get('ct_encoder') or {}).get('name', '?')}`, preprocessing "
        f"`{(manifest.get('preprocess') or {}).get('name', '?')}`; shared space of "
        f"{(manifest.get('space') or {}).get('dim', '?')} dimensions.",
        f"- Speech student: backbone `{(manifest.get('speech') or {}).get('backbone', '-')}` "
        f"(frozen backbone from its installed package, sha256 in `bundle.json`).",
        f"- Text tower: `{(manifest.get('text') or {}).get('backbone', '-')}` (typed-text search only).",
        f"- Dictation head: {len(head['classes'])} mention states ({', '.join(head['classes'])}); reader that "
        f"decides: `{reader}`." if head else "- No dictation head.",
        "",
        "## Training data",
        "",
        f"- Data: `{prov.get('data', '?')}` (config `{prov.get('config', '?')}`), {prov.get('n_train', '?')} "
        f"training and {prov.get('n_valid', '?')} validation studies.",
        f"- Seeds: {_seeds(prov.get('seeds'))}; code commit `{prov.get('commit', '?')}`.",
        "- SpeechCT's default bundles are trained on synthetic CT-RATE-layout phantoms and synthetic spoken "
        "reports (`train.synth`), not on patient data.",
        "",
        "## Evaluation",
        "",
        *_evaluation_lines(manifest.get("evaluation") or {}),
        f"Thresholds: {thresholds.get('method', 'none (0.5 for every finding)')}.",
        "",
        "## Limitations",
        "",
        f"- Findings whose validation AUROC ({statistic or 'not stored'}) is below {RELIABLE_AUROC} are never "
        f"checked against a dictation: {', '.join(weak) if weak else 'none'}.",
        "- Trained on synthetic studies and synthetic voices: performance on real scanners, real patients and "
        "real radiologists' speech is unknown until measured.",
        "- English dictations only; chest CT only; one series per study.",
        "- Probabilities come from zero-shot prompt similarity and are not calibrated risks.",
        "",
    ]
    return "\n".join(lines)
