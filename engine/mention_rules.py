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

from engine.labels import LABELS

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


#: How many words (a finding term counts as one) may stand between a pre-trigger and its term.
WINDOW = 8
_KINDS = {"pseudo": PRESENT, "uncertain": UNCERTAIN, "absent": ABSENT}


def _nearest_before(clause: str, lex: RuleLexicon) -> str | None:
    """The kind of the pre-trigger that ends closest before the term (within :data:`WINDOW` words)."""
    best, kind_of_best = -1, None
    for kind in _KINDS:
        for t in lex.pre.get(kind, []):
            for m in re.finditer(rf"(^|\W)({re.escape(t)})(?=\W|$)", clause):
                gap = len(clause[m.end():].split())
                if gap <= WINDOW and m.end() > best:
                    best, kind_of_best = m.end(), kind
    return kind_of_best


def _nearest_after(clause: str, lex: RuleLexicon) -> str | None:
    best, kind_of_best = None, None
    for kind in _KINDS:
        for t in lex.post.get(kind, []):
            m = re.search(rf"(^|\W){re.escape(t)}(\W|$)", clause)
            if m and (best is None or m.start() < best):
                best, kind_of_best = m.start(), kind
    return kind_of_best


def _collapse_terms(text: str, taken: list[bool]) -> str:
    """``text`` with every found term reduced to one word, so a list of long terms stays in the window."""
    out, inside = [], False
    for c, t in zip(text, taken):
        if t and not inside:
            out.append("x")
        elif not t:
            out.append(c)
        inside = t
    return "".join(out)


def label_sentence(sentence: str, lex: RuleLexicon) -> dict[str, str]:
    """The states of the findings one sentence names (ConText: the nearest trigger before a term in its
    clause decides, else one after it; no trigger = present)."""
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
        cut = max((m.end() for m in _CLAUSE_END.finditer(masked[:start])), default=0)
        clause = _collapse_terms(s[cut:start], taken[cut:start])
        stop = _CLAUSE_END.search(masked[end:])
        suffix_clause = s[end:end + stop.start()] if stop else s[end:]
        kind = _nearest_before(clause, lex) or _nearest_after(suffix_clause, lex)
        state = _KINDS[kind] if kind else PRESENT
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
