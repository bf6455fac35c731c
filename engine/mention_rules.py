"""Reading mention states out of report text with rules: NegEx/ConText triggers and finding terms.

The matching half of the rule reader (the other half, which builds the lexicon from the report grammar's
training lists, is ``train.labeler``). A :class:`RuleLexicon` is plain data, so a bundle can carry the
one it was validated with and the engine can read a transcript with it when that reader scored higher
than the speech-native one. Per sentence, every finding term found (longest match first) takes the state
its triggers give: a pseudo-negation ("no change in", "stable") -> present; an uncertainty trigger before
it in the same clause or after it -> uncertain; a negation trigger before it in the same clause (clauses
end at "but", "however", "with", ";") or after it -> absent; otherwise present. Normal statements settle
their findings as absent; indication sentences are skipped. Over the text, present beats uncertain beats
absent (CheXpert's aggregation).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from engine.findings import LABELS

PRESENT, UNCERTAIN, ABSENT, NOT_MENTIONED = "present", "uncertain", "absent", "not mentioned"
_RANK = {PRESENT: 3, UNCERTAIN: 2, ABSENT: 1, NOT_MENTIONED: 0}
_CLAUSE_END = re.compile(r"\b(but|however|with|although|while)\b|;")
_SPOKEN = ((r"\b(new paragraph|next paragraph|new line)\b", "."), (r"\b(full stop|period)\b", "."),
           (r"\bcomma\b", ","))


def normalise(text: str) -> str:
    """Lower case, spoken punctuation as punctuation, only letters, digits and , ; . - kept."""
    t = text.lower()
    for pat, rep in _SPOKEN:
        t = re.sub(pat, rep, t)
    t = re.sub(r"[^a-z0-9\-;,. ]+", " ", t)
    t = re.sub(r"\s+([,;.])", r"\1", t)
    return re.sub(r"\s+", " ", t).strip()


@dataclass
class RuleLexicon:
    """``terms``: label -> normalised terms; ``pre``/``post``: kind (absent, uncertain, pseudo) -> triggers
    before / after a term; ``normals``: (regex of a whole sentence, {label: state}); ``indication``:
    sentence starts to skip; ``headings``: words said as a heading of the next sentence."""

    terms: dict[str, list[str]] = field(default_factory=dict)
    pre: dict[str, list[str]] = field(default_factory=dict)
    post: dict[str, list[str]] = field(default_factory=dict)
    normals: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    indication: list[str] = field(default_factory=list)
    headings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RuleLexicon:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown rule lexicon keys: {sorted(unknown)}")
        lex = cls(**{k: v for k, v in data.items()})
        lex.normals = [(p, dict(s)) for p, s in lex.normals]
        return lex


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"[.?!](?=\s|$)|(?<!\d)[.?!](?!\d)", normalise(text)) if s.strip(" .,")]


#: How many words may stand between a pre-trigger and its term (NegEx's window is five).
WINDOW = 6


def _has_before(clause_prefix: str, triggers: list[str]) -> bool:
    return any(re.search(rf"(^|\W){re.escape(t)}\W+(\S+\s+){{0,{WINDOW}}}$", clause_prefix + " ") for t in triggers)


def _has_after(suffix: str, triggers: list[str]) -> bool:
    return any(re.search(rf"(^|\W){re.escape(t)}(\W|$)", suffix) for t in triggers)


def label_sentence(sentence: str, lex: RuleLexicon) -> dict[str, str]:
    s = normalise(sentence).strip(" .")
    if any(s.startswith(ind) for ind in lex.indication if ind):
        return {}
    for pattern, states in lex.normals:
        if re.fullmatch(pattern, s):
            return dict(states)
    found: list[tuple[int, int, str]] = []
    taken = [False] * len(s)
    for lab, terms in lex.terms.items():
        for term in terms:
            for m in re.finditer(rf"(?<![\w-]){re.escape(term)}(?![\w-])", s):
                if not any(taken[m.start():m.end()]):
                    found.append((m.start(), m.end(), lab))
                    for i in range(m.start(), m.end()):
                        taken[i] = True
    out: dict[str, str] = {}
    masked = "".join("x" if t else c for c, t in zip(s, taken))  # clause words inside a term do not count
    for start, end, lab in sorted(found):
        prefix = s[:start]
        cut = max((m.end() for m in _CLAUSE_END.finditer(masked[:start])), default=0)
        clause = prefix[cut:]
        suffix = s[end:]
        stop = _CLAUSE_END.search(masked[end:])
        suffix_clause = suffix[:stop.start()] if stop else suffix
        if _has_before(clause, lex.pre["pseudo"]) or _has_after(suffix_clause, lex.post["pseudo"]):
            state = PRESENT
        elif _has_before(clause, lex.pre["uncertain"]) or _has_after(suffix_clause, lex.post["uncertain"]) \
                or _has_before(prefix, ["likely represent", "may represent"]):
            state = UNCERTAIN
        elif _has_before(clause, lex.pre["absent"]) or _has_after(suffix_clause, lex.post["absent"]):
            state = ABSENT
        else:
            state = PRESENT
        if _RANK[state] > _RANK.get(out.get(lab, NOT_MENTIONED), 0):
            out[lab] = state
    return out


def read_mentions(text: str, lex: RuleLexicon) -> dict[str, str]:
    """The mention state of every one of the 18 findings in ``text`` (a report, a dictation or a transcript)."""
    states = dict.fromkeys(LABELS, NOT_MENTIONED)
    sentences = _sentences(text)
    # a heading said as its own sentence ("Indication period rule out ...") joins the sentence it heads
    joined: list[str] = []
    for s in sentences:
        if joined and joined[-1] in (*lex.indication, *lex.headings):
            joined[-1] = joined[-1] + " " + s
        else:
            joined.append(s)
    for sentence in joined:
        for lab, st in label_sentence(sentence, lex).items():
            if _RANK[st] > _RANK[states[lab]]:
                states[lab] = st
    return states
