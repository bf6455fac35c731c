"""A NegEx/ConText-style rule labeler: the four mention states of the 18 findings in a report's text.

The peer of the speech-native dictation reader (run on ASR transcripts: the cascade), and the way a user
with real CT-RATE (18 binary labels, no mentions) gets four-state mentions to train a dictation head
(``speechct-train label-mentions``). Its whole lexicon comes from the *training* lists of the report
grammar (:mod:`train.synth.lexicon`, :mod:`train.synth.grammar`): finding terms with their slots dropped,
and triggers cut out of the training structures (the words before a noun phrase are a pre-trigger, the
words after it a post-trigger). So it knows exactly what the speech reader was trained on, no more.

Per sentence: every finding term found (longest match first) takes the state its triggers give:
pseudo-negation ("no change in", "stable") -> present; an uncertainty trigger before it in the same
clause or after it -> uncertain; a negation trigger before it in the same clause (clauses end at "but",
"however", "with", ";") or after it -> absent; otherwise present. Normal statements of the lexicon
("The heart is normal in size") settle their findings as absent. Indication sentences are skipped.
Over the report: present beats uncertain beats absent (CheXpert's aggregation).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from engine.findings import LABELS
from train.synth import grammar as G
from train.synth.lexicon import FINDINGS, MULTI_NORMALS
from train.synth.reports import DEVICE_NAMES

_RANK = {G.PRESENT: 3, G.UNCERTAIN: 2, G.ABSENT: 1, G.NOT_MENTIONED: 0}
_CLAUSE_END = re.compile(r"\b(but|however|with|although|while)\b|;")
_SPOKEN = ((r"\b(new paragraph|next paragraph|new line)\b", "."), (r"\b(full stop|period)\b", "."),
           (r"\bcomma\b", ","))


def _norm(text: str) -> str:
    t = text.lower()
    for pat, rep in _SPOKEN:
        t = re.sub(pat, rep, t)
    t = re.sub(r"[^a-z0-9\-;,. ]+", " ", t)
    t = re.sub(r"\s+([,;.])", r"\1", t)
    return re.sub(r"\s+", " ", t).strip()


def _strip_slots(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"\{\w+\}", " ", text)).strip()


@dataclass
class Lexicon:
    terms: dict[str, list[str]] = field(default_factory=dict)  # label -> term strings (normalised)
    pre: dict[str, list[str]] = field(default_factory=dict)  # state kind -> triggers before the term
    post: dict[str, list[str]] = field(default_factory=dict)  # state kind -> triggers after the term
    normals: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # sentence -> states
    indication: list[str] = field(default_factory=list)
    headings: list[str] = field(default_factory=list)


@lru_cache(maxsize=4)
def training_lexicon(wording: str = "train") -> Lexicon:
    """Everything the labeler knows, from the grammar's ``core`` + ``wording`` lists (``train`` by default)."""
    lex = Lexicon()
    for lab, entry in FINDINGS.items():
        terms = set()
        for key in ("terms", "neg_terms"):
            for t in G.part(entry.get(key, {}), wording):
                text = _strip_slots(t.split(":", 1)[1])
                if len(text) >= 4 and text not in ("in place", "in situ"):
                    terms.add(_norm(text))
                    if t.startswith("a:"):
                        terms.add(_norm(G._plural(text)))
        if lab == "Medical material":  # its terms are the device names the grammar fills in
            terms.update(_norm(k) for k in DEVICE_NAMES)
        lex.terms[lab] = sorted(terms, key=len, reverse=True)
        for state in (G.ABSENT, G.PRESENT, G.UNCERTAIN):
            for sentence in G.part(entry.get("own", {}).get(state, {}), wording):
                pattern = re.escape(_norm(re.sub(r"\{\w+\}", " zzslot ", sentence)).strip(" ."))
                lex.normals.append((pattern.replace("zzslot", r"[\w .,-]+"), {lab: state}))
    for sentence, settles in G.part(MULTI_NORMALS, wording):
        lex.normals.append((re.escape(_norm(sentence).strip(" .")), dict.fromkeys(settles, G.ABSENT)))
    for kind in ("absent", "uncertain", "pseudo"):
        pre, post = set(), set()
        for s in G.part(G.STRUCTURES[kind], wording):
            for variant in (s.replace("<be>", "is"), s.replace("<be>", "are")):
                m = re.search(r"<NPb?>", variant)
                before, after = variant[:m.start()], variant[m.end():]
                before = _norm(re.sub(r"<[^>]+>", " ", before))
                after = _norm(re.sub(r"<[^>]+>", " ", after).replace("<has>", "has"))
                neutral = before in ("", "the", "a", "there is", "there are")
                if not neutral:
                    pre.add(before.strip(" ,."))
                elif after.strip(" .,"):  # the trigger follows the finding ("... is not seen")
                    post.add(after.strip(" ,."))
        lex.pre[kind], lex.post[kind] = sorted(pre, key=len, reverse=True), sorted(post, key=len, reverse=True)
    for kind in ("list_absent",):
        for s in G.part(G.STRUCTURES[kind], wording):
            m = re.search(r"<A>", s)
            before = _norm(s[:m.start()])
            if before:
                lex.pre["absent"] = sorted(set(lex.pre["absent"]) | {before}, key=len, reverse=True)
    for s in G.part(G.STRUCTURES["present_absent"], wording):
        m = re.search(r"<B>", s)
        before = _norm(re.sub(r"<[^>]+>", " ", s[:m.start()]).split(",")[-1])
        if before and before not in lex.pre["absent"]:
            lex.pre["absent"] = sorted({*lex.pre["absent"], before.split()[-1] if before.split() else before},
                                       key=len, reverse=True)
    for s in G.part(G.STRUCTURES["indication"], wording):
        lex.indication.append(_norm(s.split("<")[0]).rstrip(" :,"))
        lex.headings.append(_norm(re.split(r"[:,]", s)[0]))
    for s in G.part(G.IMPRESSION, wording):  # "Impression:" said as a heading, sometimes as its own sentence
        lex.headings.append(_norm(s).rstrip(" :,"))
    # "there is no" style pre-triggers reduce to their negation word for matching inside longer clauses
    lex.pre["absent"] = sorted({*lex.pre["absent"], "no", "without"}, key=len, reverse=True)
    return lex


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"[.?!](?=\s|$)|(?<!\d)[.?!](?!\d)", _norm(text)) if s.strip(" .,")]


def _has_before(clause_prefix: str, triggers: list[str]) -> bool:
    return any(re.search(rf"(^|\W){re.escape(t)}(\W|$)", clause_prefix) for t in triggers)


def _has_after(suffix: str, triggers: list[str]) -> bool:
    return any(re.search(rf"(^|\W){re.escape(t)}(\W|$)", suffix) for t in triggers)


def label_sentence(sentence: str, lex: Lexicon) -> dict[str, str]:
    s = _norm(sentence).strip(" .")
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
            state = G.PRESENT
        elif _has_before(clause, lex.pre["uncertain"]) or _has_after(suffix_clause, lex.post["uncertain"]) \
                or _has_before(prefix, ["likely represent", "may represent"]):
            state = G.UNCERTAIN
        elif _has_before(clause, lex.pre["absent"]) or _has_after(suffix_clause, lex.post["absent"]):
            state = G.ABSENT
        else:
            state = G.PRESENT
        if _RANK[state] > _RANK.get(out.get(lab, G.NOT_MENTIONED), 0):
            out[lab] = state
    return out


def label_report(text: str, lex: Lexicon | None = None) -> dict[str, str]:
    """The mention state of every one of the 18 findings in ``text`` (a report, a dictation or a transcript)."""
    lex = lex or training_lexicon()
    states = dict.fromkeys(LABELS, G.NOT_MENTIONED)
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
