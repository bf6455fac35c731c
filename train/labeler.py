"""The rule reader's lexicon, built from the report grammar's *training* lists only.

The matching half lives in :mod:`engine.mention_rules` (so a bundle can carry this lexicon and the engine
read transcripts with it). The rule reader is the peer of the speech-native dictation reader (run on ASR
transcripts: the cascade), and the way a user with real CT-RATE (18 binary labels, no mentions) gets
four-state mentions to train a dictation head (``speechct-train label-mentions``). Terms are the
grammar's finding terms with their slots dropped; triggers are cut out of the training structures (the
words before a noun phrase are a pre-trigger, the words after it a post-trigger), so the labeler knows
exactly the wording the speech reader was trained on, no more.
"""

from __future__ import annotations

import re
from functools import lru_cache

from engine.mention_rules import RuleLexicon, read_mentions
from engine.mention_rules import normalise as _norm
from train.synth import grammar as G
from train.synth.lexicon import FINDINGS, MULTI_NORMALS
from train.synth.reports import DEVICE_NAMES


def _strip_slots(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"\{\w+\}", " ", text)).strip()


@lru_cache(maxsize=4)
def training_lexicon(wording: str = "train") -> RuleLexicon:
    """Everything the labeler knows, from the grammar's ``core`` + ``wording`` lists (``train`` by default)."""
    lex = RuleLexicon()
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
    pre: dict[str, set[str]] = {kind: set() for kind in ("absent", "uncertain", "pseudo")}
    post: dict[str, set[str]] = {kind: set() for kind in pre}
    for kind in pre:
        for s in G.part(G.STRUCTURES[kind], wording):
            for variant in (s.replace("<be>", "is").replace("<has>", "has"), s.replace("<be>", "are")
                            .replace("<has>", "have")):
                m = re.search(r"<NPb?>", variant)
                # the words right next to the noun phrase (a location token splits "Subtle changes <L> likely
                # represent" into context and trigger: the trigger is the part touching the phrase)
                before = _norm(re.split(r"<[^>]+>", variant[:m.start()])[-1]).strip(" ,.")
                after = _norm(re.split(r"<[^>]+>", re.sub(r"^<L>", "", variant[m.end():]))[0]).strip(" ,.")
                if before not in ("", "the", "a", "there is", "there are"):
                    pre[kind].add(before)
                elif after:  # the trigger follows the finding ("... is not seen")
                    post[kind].add(after)
    # the negation that governs a list ("no evidence of <A> or <B>") or a sentence's second, absent finding
    # ("<NP1> without <B>", "..., but no <B>": the last word of its clause)
    for kind, token in (("list_absent", "<A>"), ("present_absent", "<B>")):
        for s in G.part(G.STRUCTURES[kind], wording):
            words = _norm(re.sub(r"<[^>]+>", " ", s[:s.index(token)]).split(",")[-1]).split()
            if words:
                pre["absent"].add(words[-1] if kind == "present_absent" else " ".join(words))
    lex.pre = {k: sorted(v, key=len, reverse=True) for k, v in pre.items()}
    lex.post = {k: sorted(v, key=len, reverse=True) for k, v in post.items()}
    for s in G.part(G.STRUCTURES["indication"], wording):
        lex.indication.append(_norm(s.split("<")[0]).rstrip(" :,"))
        lex.headings.append(_norm(re.split(r"[:,]", s)[0]))
    for s in G.part(G.IMPRESSION, wording):  # "Impression:" said as a heading, sometimes as its own sentence
        lex.headings.append(_norm(s).rstrip(" :,"))
    return lex


def label_report(text: str, lex: RuleLexicon | None = None) -> dict[str, str]:
    """The mention state of every one of the 18 findings in ``text``, read with the training lexicon."""
    return read_mentions(text, lex or training_lexicon())
