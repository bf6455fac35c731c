"""engine.session.StudySession: findings once, then a dictation that reuses them (counted), similar
studies and indexing from the embeddings already made; the same results as Engine.analyze."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest

from engine.audio import load_audio
from engine.runtime import Engine
from engine.session import StudySession

from .test_runtime import SAMPLE_WAV, phantom
from .tiny_bundle import tiny_bundle_path


@pytest.fixture
def counted(monkeypatch):
    """Calls of the CT encoder, the speech encoder and the study key/fingerprint hashing."""
    import engine.study_identity as ident

    calls = {"ct": 0, "speech": 0, "study_key": 0, "fingerprint": 0}

    def count(name, fn):
        def wrapper(*a, **kw):
            calls[name] += 1
            return fn(*a, **kw)
        return wrapper

    monkeypatch.setattr(ident, "study_key", count("study_key", ident.study_key))
    monkeypatch.setattr(ident, "voxel_fingerprint", count("fingerprint", ident.voxel_fingerprint))
    eng = Engine(tiny_bundle_path(), cache_dir=False, device="cpu")
    ct, speech = eng._model("ct"), eng._model("speech")
    monkeypatch.setattr(ct, "forward", count("ct", ct.forward))
    monkeypatch.setattr(speech, "encode_waveforms", count("speech", speech.encode_waveforms))
    return eng, calls


def test_a_dictation_recomputes_nothing_of_the_study(counted, tmp_path):
    eng, calls = counted
    volume = phantom(7, "1.2.840.7")
    session = StudySession(eng, volume)
    first = session.findings()
    assert calls == {"ct": 1, "speech": 0, "study_key": 1, "fingerprint": 1}
    assert session.findings() is first  # cached
    wave = load_audio(SAMPLE_WAV)
    checked = session.add_dictation(wave, 16000, audio_path=SAMPLE_WAV)
    assert calls == {"ct": 1, "speech": 1, "study_key": 1, "fingerprint": 1}  # only the speech encoder ran
    assert checked.findings == first.findings and checked.dictation is not None
    assert session.analysis is checked
    # the same answer as the one-call path
    whole = eng.analyze(volume, wave, 16000)
    assert [asdict(f) for f in checked.findings] == [asdict(f) for f in whole.findings]
    assert [asdict(d) for d in checked.dictation] == [asdict(d) for d in whole.dictation]
    assert [asdict(d) for d in checked.discrepancies] == [asdict(d) for d in whole.discrepancies]
    assert checked.to_json().keys() == whole.to_json().keys()
    assert list(checked.timings) == list(whole.timings)


def test_similar_and_index_reuse_the_embeddings(counted, tmp_path):
    eng, calls = counted
    eng._library_path = tmp_path / "lib"
    other = StudySession(eng, phantom(8, "1.2.840.8"))
    other.index()  # encodes its CT once (through findings) and stores it
    session = StudySession(eng, phantom(9, "1.2.840.9"))
    session.add_dictation(load_audio(SAMPLE_WAV), 16000, audio_path=SAMPLE_WAV, similar_k=3)
    before = dict(calls)
    hits = session.similar(k=5)
    assert [h["uid"] for h in hits] == ["1.2.840.8"]  # never the study itself
    record = session.index()
    assert record.has_dictation and record.dictation_path == str(SAMPLE_WAV.resolve())
    assert calls["ct"] == before["ct"] and calls["speech"] == before["speech"]  # nothing encoded again
    assert np.isfinite(hits[0]["score"])


def test_silence_changes_nothing(counted):
    from engine.speech_presence import NoSpeechError

    eng, _ = counted
    session = StudySession(eng, phantom(10, "1.2.840.10"))
    first = session.findings()
    with pytest.raises(NoSpeechError):
        session.add_dictation(np.zeros(16000, np.float32), 16000)
    assert session.analysis is first
