"""A compositional grammar of chest CT report sentences, with the mention state of every finding.

A sentence is built from a *structure* (``"<NP><L> <be> seen."``, ``"No evidence of <NPb>."``), the
*terms* of :mod:`train.synth.lexicon` and the instance's slots (size, side, lobes, severity...). Its
*form* is the sentence with the slots still unfilled, the unit in which wording is counted and split.
Structures, like terms, come in parts ``train`` / ``valid`` / ``test`` (no structure is shared), so a
validation or test sentence is never one training has seen (``docs/report-grammar.md``).

Mention states (the CheXpert labeler's four): ``present``, ``uncertain`` (hedged, on findings that are
in the image or not), ``absent`` (negated, or settled by a normal statement) and ``not mentioned``.
Pseudo-negations ("No change in the pleural effusion", "Stable nodule") state a finding *present*.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from train.synth.lexicon import FINDINGS
from train.synth.lexicon import part_items as part

PRESENT, UNCERTAIN, ABSENT, NOT_MENTIONED = "present", "uncertain", "absent", "not mentioned"

#: Tokens: <NP> noun phrase with its article, <NPb> without, <be> is/are, <has> has/have, <L> location
#: phrase (may be empty), <Lf> fronted location ("In the right lower lobe").
STRUCTURES: dict[str, dict[str, list[str]]] = {
    "present": {
        "train": ["There <be> <NP><L>.", "<NP><L>.", "<NP><L> <be> seen.", "<NP> <be> noted<L>.",
                  "<NP> <be> present<L>.", "<NP> <be> identified<L>.", "The study shows <NP><L>.",
                  "<Lf>, there <be> <NP>.", "Findings consistent with <NPb><L>.", "<NP> <be> visualized<L>.",
                  "There <be> also <NP><L>."],
        "valid": ["<NP> <be> observed<L>.", "Images demonstrate <NP><L>.", "<NP> <be> depicted<L>."],
        "test": ["<NP> <be> evident<L>.", "Note is made of <NP><L>.", "There is evidence of <NPb><L>.",
                 "<NP> <be> appreciated<L>.", "Redemonstration of <NPb><L>.", "<NP> can be seen<L>.",
                 "<Lf>, <NP> <be> present."],
    },
    "pseudo": {  # pseudo-negations and follow-up wording: the finding is present
        "train": ["No change in the <NPb><L>.", "Stable <NPb><L>.", "The <NPb><L> <be> unchanged.",
                  "No significant change in the <NPb>."],
        "valid": ["<NPb> <be> stable<L>."],
        "test": ["No interval change in the <NPb><L>.", "Unchanged <NPb><L>.", "The <NPb> <be> stable in size.",
                 "No increase in the <NPb>."],
    },
    "absent": {
        "train": ["No <NPb>.", "There <be> no <NPb>.", "No evidence of <NPb>.", "Negative for <NPb>.",
                  "There <be> no evidence of <NPb>.", "No signs of <NPb>.", "<NPb> <be> not seen.",
                  "<NPb> <be> absent.", "<NPb> <be> not present.", "No <NPb> <be> seen."],
        "valid": ["<NPb> <be> not demonstrated.", "Absence of <NPb>.", "The study is free of <NPb>."],
        "test": ["<NPb> <be> not identified.", "There <be> no sign of <NPb>.", "<NPb> <has> resolved.",
                 "No definite <NPb>.", "<NPb> <be> not detected.", "We see no <NPb>.", "<NPb> <be> no longer seen."],
    },
    "uncertain": {
        "train": ["Possible <NPb><L>.", "<NP><L> cannot be excluded.", "Findings suspicious for <NPb><L>.",
                  "Probable <NPb><L>.", "Questionable <NPb><L>.", "Subtle changes<L> likely represent <NPb>.",
                  "<NP><L> <be> likely.", "There <be> possibly <NP><L>.", "Subtle changes<L> may represent <NPb>.",
                  "There may be <NP><L>."],
        "valid": ["<NP><L> <be> not excluded.", "Equivocal <NPb><L>."],
        "test": ["<NP><L> could be present.", "Cannot rule out <NPb><L>.", "Appearance suggestive of <NPb><L>.",
                 "There might be <NP><L>.", "Subtle changes<L> could represent <NPb>.", "Suspected <NPb><L>.",
                 "<NP><L> <be> suspected."],
    },
    # several findings in one sentence: <A>, <B>, <C> slot-free absent terms; <NP1>/<NP2> present ones
    "list_absent": {
        "train": ["No <A> or <B>.", "No <A>, <B> or <C>.", "There is no <A> or <B>.", "No evidence of <A> or <B>."],
        "valid": ["<A> and <B> are not seen.", "<A>, <B> and <C> are absent."],
        "test": ["Neither <A> nor <B> is identified.", "<A>, <B> and <C> are not seen.",
                 "There is no sign of <A>, <B> or <C>."],
    },
    "present_absent": {
        "train": ["<NP1><L1> without <B>.", "There <be1> <NP1><L1>, but no <B>.", "<NP1> <be1> seen<L1>, with no <B>."],
        "valid": ["<NP1><L1>; no <B>."],
        "test": ["<NP1><L1> with no associated <B>.", "<NP1> <be1> present<L1>; however, there is no <B>."],
    },
    "present_present": {
        "train": ["There <be1> <NP1><L1> and <NP2><L2>.", "<NP1><L1> with <NP2><L2>."],
        "valid": ["<NP1><L1> together with <NP2><L2>."],
        "test": ["<NP1><L1>, along with <NP2><L2>.", "<NP1><L1> accompanied by <NP2><L2>."],
    },
    # spoken context that mentions nothing: the indication
    "indication": {
        "train": ["Indication: rule out <NPb>.", "Clinical history: evaluate for <NPb>."],
        "valid": ["History: query <NPb>."],
        "test": ["Reason for exam: assess for <NPb>.", "Clinical question, <NPb>?"],
    },
}

LOCATION = {"train": [" in the {X}", " involving the {X}"], "valid": [" at the {X}"],
            "test": [" within the {X}", " affecting the {X}"]}
FRONTED = {"train": ["In the {X}"], "valid": ["At the {X}"], "test": ["Within the {X}"]}
SIZE = {"train": [" measuring {size} mm", " up to {size} mm"], "valid": [", about {size} mm"],
        "test": [" of approximately {size} mm", " measuring {size} millimeters"]}
#: Spoken only: dictation commands and self-corrections.
COMMANDS = {"train": {"period": " period", "paragraph": " new paragraph", "comma": " comma"},
            "valid": {"period": " stop", "paragraph": " next paragraph", "comma": " comma"},
            "test": {"period": " full stop", "paragraph": " new line", "comma": " comma"}}
CORRECTION = {"train": [", correction, "], "valid": [", sorry, "], "test": [", scratch that, ", ", I mean, "]}
IMPRESSION = {"train": ["Impression:"], "valid": ["Conclusion:"], "test": ["In summary:"]}

_TOKEN = re.compile(r"<(NP|NPb|be|has|L|Lf|A|B|C|NP1|NP2|L1|L2|be1)>")


@dataclass(frozen=True)
class Term:
    kind: str  # a | pl | m
    text: str

    @classmethod
    def parse(cls, s: str) -> Term:
        kind, text = s.split(":", 1)
        if kind not in ("a", "pl", "m"):
            raise ValueError(f"bad term kind in {s!r}")
        return cls(kind, text)

    @property
    def slotted(self) -> bool:
        return "{" in self.text


@dataclass
class Phrase:
    """A noun phrase as a template (slots unfilled) with its agreement."""

    bare: str  # without article: "small right pleural effusion measuring {size} mm"
    kind: str

    @property
    def with_article(self) -> str:
        return ("a(n) " + self.bare) if self.kind == "a" else self.bare

    @property
    def be(self) -> str:
        return "are" if self.kind == "pl" else "is"

    @property
    def has(self) -> str:
        return "have" if self.kind == "pl" else "has"


@dataclass
class Sentence:
    form: str  # the template: wording with slots unfilled
    text: str  # as written
    states: dict[str, str] = field(default_factory=dict)  # label -> mention state
    spoken_only: bool = False  # an indication: read aloud, never in Findings_EN, states empty


def _plural(words: str) -> str:
    """Pluralise the head of a countable phrase: "pleural effusion" -> "pleural effusions",
    "hernia through the hiatus" -> "hernias through the hiatus"."""
    m = re.search(r"\s(in|of|through|with|around|at|from)\s", words)
    head, tail = (words[:m.start()], words[m.start():]) if m else (words, "")
    if head.endswith(("s", "x")):
        return head + "es" + tail
    return head + "s" + tail


def noun_phrase(label: str, wording: str, rng: np.random.Generator, slots: dict | None, *,
                modifiers: bool = True) -> Phrase:
    """A noun phrase for ``label``. ``slots`` None: a finding that is not there (slot-free terms, no
    modifiers). Present findings get premodifiers, a size and (bilateral) plural agreement."""
    entry = FINDINGS[label]
    pool = [Term.parse(t) for t in part(entry["terms"], wording)]
    if slots is None:
        pool = [t for t in pool if not t.slotted]
        neg = [Term.parse(t) for t in part(entry.get("neg_terms", {}), wording)]
        pool = neg if label == "Medical material" else pool + neg
    else:
        pool = [t for t in pool if all(_slot_ok(s, slots) for s in re.findall(r"{(\w+)}", t.text))]
    term = pool[int(rng.integers(len(pool)))]
    words, kind = term.text, term.kind
    if slots is not None and modifiers:
        pres = [p for p in part(entry["pre"], wording) if all(_slot_ok(s, slots) for s in re.findall(r"{(\w+)}", p))]
        pre = pres[int(rng.integers(len(pres)))] if pres else ""
        if pre and not term.slotted:
            words = f"{pre} {words}"
        if "{side}" in pre and slots.get("side") == "bilateral" and kind == "a":
            words, kind = _plural(words), "pl"
        sized = entry.get("sized")  # "always" | "maybe" | None: a size phrase only where radiologists give one
        if slots.get("size") not in ("", None) and (sized == "always" or (sized and rng.random() < 0.5)):
            sizes = part(SIZE, wording)
            words += sizes[int(rng.integers(len(sizes)))]
    return Phrase(words, kind)


def _slot_ok(name: str, slots: dict) -> bool:
    key = name.lower() if name[:1].isupper() else name
    v = slots.get(key)
    if key == "n":  # a count in words: only for several
        return str(v) not in ("", "None", "1", "one")
    return v not in (None, "")


def location(label: str, wording: str, rng: np.random.Generator, slots: dict | None) -> tuple[str, str]:
    """(inline, fronted) location phrase templates, or ("", "") when the finding has none."""
    where = FINDINGS[label].get("where")
    if slots is None or where is None or not _slot_ok(where, slots):
        return "", ""
    x = "{" + where + "}" + (" region" if label in ("Medical material", "Lymphadenopathy") else "")
    inline = part(LOCATION, wording)
    front = part(FRONTED, wording)
    return (inline[int(rng.integers(len(inline)))].replace("{X}", x),
            front[int(rng.integers(len(front)))].replace("{X}", x))


def _expand(structure: str, fills: dict[str, str]) -> str:
    return _TOKEN.sub(lambda m: fills[m.group(1)], structure)


def finish(template: str, slots: dict) -> str:
    """Fill the slots, choose a/an, tidy spaces and capitalise."""
    text = template.format(**(slots or {})) if "{" in template else template
    text = re.sub(r"\ba\(n\) (\S)", lambda m: ("an " if _vowel_sound(m.group(1), text, m.end() - 1) else "a ")
                  + m.group(1), text)
    text = re.sub(r"\bA\(n\) ", "A ", text)
    text = re.sub(r"\s+", " ", text).strip()
    return text[:1].upper() + text[1:]


def _vowel_sound(first: str, text: str, pos: int) -> bool:
    word = re.match(r"[\w-]+", text[pos:])
    w = word.group(0).lower() if word else first.lower()
    if w[:1].isdigit():
        return w.startswith("8") or w in ("11", "18") or w.startswith(("11", "18")) and len(w) in (2, 5)
    return w[:1] in "aeio" or (w.startswith("u") and not w.startswith(("uni", "use", "usu")))


def _choose(rng: np.random.Generator, items: list):
    return items[int(rng.integers(len(items)))]


def _usable(structures: list[str], has_location: bool) -> list[str]:
    return [s for s in structures if has_location or "<Lf>" not in s]


def single(label: str, state: str, wording: str, rng: np.random.Generator, slots: dict | None, *,
           pseudo: bool = False, compact: bool = False) -> Sentence:
    """One sentence that mentions ``label`` in ``state`` (``slots`` None for a finding not in the image).
    ``compact``: no modifiers and the shortest of a few structures (a report over its word budget)."""
    if compact:
        options = [_single(label, state, wording, rng, slots, pseudo, modifiers=False) for _ in range(4)]
        return min(options, key=lambda s: len(s.text.split()))
    return _single(label, state, wording, rng, slots, pseudo)


def _single(label, state, wording, rng, slots, pseudo, modifiers=True) -> Sentence:
    entry = FINDINGS[label]
    own = entry.get("own", {}).get(state)
    if own and modifiers and rng.random() < 0.3:
        options = [t for t in part(own, wording)
                   if all(_slot_ok(s, slots or {}) for s in re.findall(r"{(\w+)}", t))]
        if options:
            form = _choose(rng, options)
            return Sentence(form, finish(form, slots or {}), {label: state})
    kind = "pseudo" if pseudo else state
    phrase = noun_phrase(label, wording, rng, slots if state != ABSENT else None, modifiers=modifiers)
    loc, front = location(label, wording, rng, slots) if state != ABSENT else ("", "")
    structure = _choose(rng, _usable(part(STRUCTURES[kind], wording), bool(front)))
    form = _expand(structure, {"NP": phrase.with_article, "NPb": phrase.bare, "be": phrase.be, "has": phrase.has,
                               "L": loc, "Lf": front})
    return Sentence(form, finish(form, slots or {}), {label: state})


def list_absent(labels: list[str], wording: str, rng: np.random.Generator) -> Sentence:
    """One negation naming two or three absent findings ("No pleural or pericardial effusion")."""
    structures = [s for s in part(STRUCTURES["list_absent"], wording) if ("<C>" in s) == (len(labels) == 3)]
    if not structures:  # a wording without three-item lists: name two
        labels = labels[:2]
        structures = [s for s in part(STRUCTURES["list_absent"], wording) if "<C>" not in s]
    structure = _choose(rng, structures)
    fills = {k: noun_phrase(lab, wording, rng, None).bare for k, lab in zip("ABC", labels)}
    form = _expand(structure, fills)
    return Sentence(form, finish(form, {}), dict.fromkeys(labels, ABSENT))


def present_absent(pos: str, pos_slots: dict, neg: str, wording: str, rng: np.random.Generator) -> Sentence:
    """A present finding and an absent one in one sentence ("Cardiomegaly without pericardial effusion")."""
    p = noun_phrase(pos, wording, rng, pos_slots)
    loc, _ = location(pos, wording, rng, pos_slots)
    form = _expand(_choose(rng, part(STRUCTURES["present_absent"], wording)),
                   {"NP1": p.with_article, "L1": loc, "be1": p.be, "B": noun_phrase(neg, wording, rng, None).bare})
    return Sentence(form, finish(form, pos_slots), {pos: PRESENT, neg: ABSENT})


def present_present(a: str, a_slots: dict, b: str, b_slots: dict, wording: str, rng: np.random.Generator) -> Sentence:
    """Two present findings in one sentence; the second's slots are renamed so both can be filled."""
    pa, pb = noun_phrase(a, wording, rng, a_slots), noun_phrase(b, wording, rng, b_slots)
    la, _ = location(a, wording, rng, a_slots)
    lb, _ = location(b, wording, rng, b_slots)
    rename = lambda t: re.sub(r"{(\w+)}", r"{b_\1}", t)  # noqa: E731
    form = _expand(_choose(rng, part(STRUCTURES["present_present"], wording)),
                   {"NP1": pa.with_article, "L1": la, "be1": pa.be, "NP2": rename(pb.with_article), "L2": rename(lb)})
    slots = {**a_slots, **{f"b_{k}": v for k, v in b_slots.items()}}
    return Sentence(re.sub(r"{b_(\w+)}", r"{\1}", form), finish(form, slots), {a: PRESENT, b: PRESENT})


def indication(label: str, wording: str, rng: np.random.Generator) -> Sentence:
    phrase = noun_phrase(label, wording, rng, None)
    form = _expand(_choose(rng, part(STRUCTURES["indication"], wording)), {"NPb": phrase.bare})
    return Sentence(form, finish(form, {}), {}, spoken_only=True)
