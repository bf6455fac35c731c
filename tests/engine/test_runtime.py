"""engine.runtime.Engine on the tiny bundle: ranking, dictation, discrepancies on controlled
embeddings; CT caching (memory and disk, per bundle); speech; analyze()'s JSON schema; threads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from engine.errors import AudioError, BundleError, SpeechCTError
from engine.labels import LABELS
from engine.offline import OFFLINE_ENV
from engine.runtime import ANALYSIS_SCHEMA, Engine, choose_device
from engine.volume import Volume

from .tiny_bundle import DIM, N, embedding, tiny_bundle_path, write_tiny_bundle

SAMPLE_WAV = Path(__file__).resolve().parents[2] / "assets" / "samples" / "study-001" / "dictation.wav"


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    return Engine(tiny_bundle_path(), cache_dir=tmp_path_factory.mktemp("emb"), device="cpu")


def phantom(seed: int, uid: str | None = None) -> Volume:
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in (20, 40, 40)), indexing="ij")
    hu = np.where(y**2 + x**2 < 0.8, 40.0, -1000.0) + rng.normal(0, 20, (20, 40, 40))
    meta = {"format": "dicom", "series_uid": uid} if uid else {"format": "nifti"}
    return Volume(hu.astype(np.float32), spacing=(16.0, 9.0, 9.0), metadata=meta)


def test_offline_is_set_before_transformers_loads():
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert os.environ["USE_HUB_KERNELS"] == "NO"


def test_importing_engine_alone_keeps_hugging_face_offline():
    """Any entry point (train, bench, a user's script) gets the flags from `import engine`, not only the
    runtime: transformers >= 5.2x would otherwise kernelize models with code from the Hub."""
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_ENV}
    code = "import os, engine; print(' '.join(os.environ[k] for k in sorted(engine.offline.OFFLINE_ENV)))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == [OFFLINE_ENV[k] for k in sorted(OFFLINE_ENV)], out.stderr
    mine = subprocess.run([sys.executable, "-c", code], env={**env, "USE_HUB_KERNELS": "YES"},
                          capture_output=True, text=True, timeout=60)
    assert "YES" in mine.stdout.split()  # a user's explicit setting wins


def test_device_choice():
    import torch

    assert choose_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert choose_device("auto").type == "cpu"
        with pytest.raises(SpeechCTError, match="no CUDA"):
            choose_device("cuda")


def test_missing_bundle_is_one_line(tmp_path):
    with pytest.raises(BundleError, match="does not exist") as err:
        Engine(tmp_path / "nope")
    assert "\n" not in str(err.value)


def test_rank_order_and_bundle_thresholds(engine):
    v = embedding(present=("Lung nodule", "Pleural effusion"))
    v[LABELS.index("Cardiomegaly")] = 0.02  # P ≈ sigmoid(2·10·0.02/|v|) ≈ 0.6: above 0.5, below its 0.7
    found = engine.rank(v)
    assert [f.label for f in found][:2] in (["Lung nodule", "Pleural effusion"], ["Pleural effusion", "Lung nodule"])
    probs = [f.probability for f in found]
    assert probs == sorted(probs, reverse=True) and len(found) == N
    by = {f.label: f for f in found}
    assert by["Lung nodule"].positive and by["Pleural effusion"].positive
    card = by["Cardiomegaly"]
    assert 0.5 < card.probability < 0.7 and card.threshold == 0.7 and not card.positive
    assert sum(f.positive for f in found) == 2
    with pytest.raises(SpeechCTError, match="64"):
        engine.rank(np.ones(DIM + 1))


def test_dictation_and_discrepancies_on_controlled_embeddings(engine):
    ct = embedding(present=("Lung nodule", "Consolidation", "Pleural effusion"))
    speech = embedding(present=("Pleural effusion", "Emphysema"), absent=("Lung nodule",))
    said = {d.label: d.status for d in engine.dictation(speech)}
    assert said["Pleural effusion"] == "present" and said["Emphysema"] == "present"
    assert said["Lung nodule"] == "absent" and said["Consolidation"] == "not mentioned"
    assert [d.label for d in engine.dictation(speech)] == list(LABELS)  # label order kept
    found = engine.discrepancies(engine.rank(ct), engine.dictation(speech))
    assert [(d.kind, d.label) for d in found] == [
        ("negated", "Lung nodule"), ("omitted", "Consolidation"), ("unsupported", "Emphysema")]
    # embeddings are accepted in place of the lists
    assert engine.discrepancies(ct, speech) == found
    # a hedged mention of an image-positive finding is a mention: neither omitted nor negated
    hedged = embedding(present=("Pleural effusion",), uncertain=("Lung nodule", "Consolidation"))
    said = {d.label: d.status for d in engine.dictation(hedged)}
    assert said["Lung nodule"] == said["Consolidation"] == "uncertain"
    assert engine.discrepancies(ct, hedged) == []
    # a dictation that says exactly what the image shows: no discrepancy
    agree = embedding(present=("Lung nodule", "Consolidation", "Pleural effusion"))
    assert engine.discrepancies(ct, agree) == []


def test_cascade_reader_when_the_bundle_chose_it(tmp_path):
    """A bundle whose validation chose the ASR + rules reader: the dictation is transcribed (packaged
    Whisper-base) and read with the bundle's lexicon, not by the head."""
    from engine.audio import load_audio
    from engine.mention_rules import RuleLexicon
    from engine.runtime import Engine

    lexicon = RuleLexicon(terms={"Lung nodule": ["pulmonary nodules", "pulmonary nodule"],
                                 "Pericardial effusion": ["pericardial effusion"], "Cardiomegaly": ["cardiomegaly"]},
                          pre={"absent": ["no"], "uncertain": ["likely"], "pseudo": []},
                          post={"absent": ["is not seen"], "uncertain": ["is likely"], "pseudo": []})
    bundle = write_tiny_bundle(tmp_path / "cascade", reader={"choice": "cascade", "why": "test",
                                                             "lexicon": lexicon.to_dict()})
    eng = Engine(bundle, device="cpu", cache_dir=False)
    assert eng.dictation_reader == "cascade"
    wav = load_audio(Path(__file__).resolve().parents[2] / "assets/samples/study-002/dictation.wav")
    said = {d.label: d.status for d in eng.read_dictation(wav, 16000)}
    assert said["Lung nodule"] == "absent" and said["Pericardial effusion"] == "uncertain"
    assert said["Emphysema"] == "not mentioned"
    # "Likely mild cardiomegaly." is read as a hedge when Whisper hears the word; on some CPUs it hears
    # "cardinal medial" (CTranslate2's kernels differ), and then cardiomegaly is rightly not mentioned
    heard = eng.transcribe(wav, 16000).lower()
    assert said["Cardiomegaly"] == ("uncertain" if "cardiomegaly" in heard else "not mentioned")
    a = eng.analyze(phantom(4, uid="4.5.6"), wav, 16000)  # transcribed once: the reader and the app share it
    assert "pericardial effusion is likely" in a.transcript.lower()
    assert {d.label: d.status for d in a.dictation} == said and "transcript" not in a.to_json()


def test_legacy_three_state_bundle_still_reads(tmp_path):
    from engine.runtime import Engine

    eng = Engine(write_tiny_bundle(tmp_path / "legacy", legacy_head=True), device="cpu")
    speech = embedding(present=("Emphysema",), absent=("Lung nodule",))
    said = {d.label: d for d in eng.dictation(speech)}
    assert said["Emphysema"].status == "present" and said["Lung nodule"].status == "absent"
    assert set(said["Emphysema"].probabilities) == {"present", "absent", "not mentioned"}


def test_findings_the_image_model_is_weak_on_are_not_checked(engine, tmp_path):
    """Hiatal hernia's validation AUROC (0.6) is below the engine's bar: an image call on it never
    contradicts the dictation, and analyze() lists it as unchecked; with the bar at 0 it is checked."""
    ct = embedding(present=("Hiatal hernia", "Lung nodule"))
    speech = embedding(absent=("Hiatal hernia", "Lung nodule"))
    by = {f.label: f for f in engine.rank(ct)}
    assert by["Hiatal hernia"].auroc == 0.6 and by["Lung nodule"].auroc == 0.9 and by["Hiatal hernia"].positive
    assert [(d.kind, d.label) for d in engine.discrepancies(ct, speech)] == [("negated", "Lung nodule")]
    strict = Engine(tiny_bundle_path(), cache_dir=tmp_path, device="cpu", min_finding_auroc=0.0)
    assert {d.label for d in strict.discrepancies(ct, speech)} == {"Hiatal hernia", "Lung nodule"}


def test_encode_ct_unit_norm_and_cached(engine, tmp_path):
    vol = phantom(1, uid="1.2.3.4")
    first = engine.encode_ct(vol)
    assert first.shape == (DIM,) and first.dtype == np.float32
    assert abs(np.linalg.norm(first) - 1) < 1e-5
    again = engine.analyze(vol)
    assert again.cached == {"ct": True}
    np.testing.assert_array_equal(again.ct_embedding, first)
    # NIfTI volumes (no UID) are keyed by content: different voxels, different embedding
    a, b = engine.encode_ct(phantom(2)), engine.encode_ct(phantom(3))
    assert not np.allclose(a, b)
    # another process (a fresh engine) finds the disk cache; memory-only engines do not
    fresh = Engine(tiny_bundle_path(), cache_dir=engine._ct_cache.folder.parent, device="cpu")
    assert fresh.analyze(vol).cached == {"ct": True}
    assert Engine(tiny_bundle_path(), cache_dir=False).analyze(vol).cached == {"ct": False}
    # the same UID with other pixels (a rewritten series) is encoded afresh, on disk too
    rewritten = phantom(4, uid="1.2.3.4")
    assert fresh.analyze(rewritten).cached == {"ct": False}
    assert not np.allclose(fresh.encode_ct(rewritten), first)


def test_encode_speech(engine):
    t = np.arange(8000 * 2) / 8000
    wav = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    vec = engine.encode_speech(wav, 8000)  # resampled to 16 kHz inside
    assert vec.shape == (DIM,) and abs(np.linalg.norm(vec) - 1) < 1e-5
    np.testing.assert_allclose(engine.encode_speech(wav, 8000), vec, atol=1e-6)
    with pytest.raises(AudioError, match="too short"):
        engine.encode_speech(np.zeros(100, np.float32), 16000)


def _spoken(seconds: float) -> np.ndarray:
    """``seconds`` of a sample dictation (analyze() refuses audio without speech)."""
    from engine.audio import load_audio

    wave = load_audio(SAMPLE_WAV)
    return wave[16000: 16000 + int(seconds * 16000)]


def test_analyze_json_schema(engine):
    wav = _spoken(1.0)
    result = engine.analyze(phantom(4, uid="9.8.7"), wav, 16000).to_json()
    json.dumps(result)  # JSON-clean
    assert set(result) == {"schema", "bundle", "device", "study", "findings", "dictation", "discrepancies",
                           "unchecked", "similar", "timings_ms", "cached"}
    assert result["unchecked"] == ["Hiatal hernia"]
    assert result["schema"] == ANALYSIS_SCHEMA and result["device"] == "cpu"
    assert set(result["bundle"]) == {"name", "hash", "path"} and len(result["bundle"]["hash"]) == 64
    assert set(result["study"]) == {"uid", "path", "study_uid", "series_uid", "format", "shape", "spacing",
                                    "warnings"}
    assert result["study"]["uid"] == "9.8.7" and result["study"]["shape"] == [20, 40, 40]
    assert [set(f) for f in result["findings"]] == [{"label", "probability", "threshold", "positive", "auroc"}] * N
    assert len(result["dictation"]) == N
    assert set(result["dictation"][0]) == {"label", "status", "confidence", "probabilities"}
    assert set(result["dictation"][0]["probabilities"]) == {"present", "uncertain", "absent", "not mentioned"}
    assert isinstance(result["discrepancies"], list) and result["similar"] is None
    assert set(result["timings_ms"]) == {"load_study", "load_models", "encode_ct", "encode_speech", "rank",
                                         "dictation", "similar", "total"}
    assert result["timings_ms"]["load_study"] is None and result["timings_ms"]["encode_speech"] > 0
    no_audio = engine.analyze(phantom(4, uid="9.8.7")).to_json()
    assert no_audio["dictation"] is None and no_audio["discrepancies"] is None
    assert no_audio["unchecked"] == result["unchecked"]  # weak findings are known before any dictation


def test_threads_share_one_engine(engine):
    engine_mem = Engine(tiny_bundle_path(), cache_dir=False, device="cpu")
    vols = [phantom(10 + i) for i in range(4)]
    expected = [engine_mem.encode_ct(v) for v in vols]
    engine_mem._ct_cache._memory.clear()
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(i):
        try:
            results[i] = engine_mem.encode_ct(vols[i])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(4):
        np.testing.assert_allclose(results[i], expected[i], atol=1e-6)


def test_text_query_embedding(engine):
    vec = engine.encode_text("right lower lobe consolidation")
    assert vec.shape == (DIM,) and abs(np.linalg.norm(vec) - 1) < 1e-5
    with pytest.raises(SpeechCTError, match="empty"):
        engine.encode_text("  ")


def test_a_frame_dictation_head_reads_the_same_pass_frames(tmp_path):
    """A bundle whose dictation head reads frames: analyze() feeds it the speech pass's frames; the
    head alone on those frames gives the same statuses; without frames the call says what is missing."""
    import torch

    from engine.models.dictation import CLASSES, FrameDictationHead

    torch.set_num_threads(1)
    eng = Engine(write_tiny_bundle(tmp_path / "frames", dictation="frames"), cache_dir=tmp_path / "emb", device="cpu")
    assert eng.dictation_reads_frames
    wave = _spoken(2.5)
    emb, frames = eng.encode_speech_frames(wave, 16000)
    assert frames.shape == (125, 512)  # 2.5 s: 250 mel frames, halved by the stride-2 convolution
    np.testing.assert_allclose(emb, eng.encode_speech(wave, 16000), atol=1e-5)
    result = eng.analyze(phantom(5), wave, 16000)
    head = eng._model("dictation")
    assert isinstance(head, FrameDictationHead)
    with torch.no_grad():
        probs = head(frames[None], torch.tensor([frames.shape[0]]))[0].softmax(-1)
    assert [d.status for d in result.dictation] == [CLASSES[int(k)] for k in probs.argmax(-1)]
    assert [d.label for d in result.dictation] == list(LABELS)
    with pytest.raises(SpeechCTError, match="encode_speech_frames"):
        eng.dictation(emb)
    with pytest.raises(SpeechCTError, match=r"\[frames, width\]"):
        eng.dictation(emb, np.zeros(512, np.float32))


def test_index_study_is_the_one_way_to_add_a_study_with_its_dictation(tmp_path):
    """``Engine.index_study``: the CLI's and the app's path. A dictation (file or waveform) is checked for
    speech before anything is added, encoded once, and stored with the study; the sample layout pairs
    ``dictation.wav`` with the DICOM folder beside it."""
    from engine.audio import load_audio
    from engine.library.ingest import dictation_beside
    from engine.speech_presence import NoSpeechError

    eng = Engine(tiny_bundle_path(), library=tmp_path / "lib", cache_dir=False, device="cpu")
    with pytest.raises(NoSpeechError):
        eng.index_study(phantom(1, "1.2.3.1"), (np.zeros(16000, np.float32), 16000), dictation_path="silence.wav")
    assert len(eng.library) == 0  # nothing added from silence
    rec = eng.index_study(phantom(2, "1.2.3.2"), SAMPLE_WAV)
    assert rec.has_dictation and rec.dictation_path == str(SAMPLE_WAV.resolve())
    rec = eng.index_study(phantom(3, "1.2.3.3"), (load_audio(SAMPLE_WAV), 16000), dictation_path=SAMPLE_WAV)
    assert rec.has_dictation and len(eng.library) == 2
    assert eng.index_study(phantom(4, "1.2.3.4")).has_dictation is False
    assert dictation_beside(SAMPLE_WAV.parent / "dicom") == SAMPLE_WAV
    assert dictation_beside(tmp_path / "nowhere" / "dicom") is None


def test_transcript_reader_when_the_bundle_chose_it(tmp_path):
    """A bundle whose validation chose the learned transcript reader: the transcript's text-tower token
    states are read by its head, exactly as the head reads them outside the engine."""
    import torch

    from engine.models.dictation import FrameDictationHead, FrameDictationHeadConfig, pad_utterances
    from engine.models.text import TextTowerConfig, create_text_tower
    torch.manual_seed(3)
    head = FrameDictationHead(FrameDictationHeadConfig(dim=384, hidden=16, stride=1, kernel=3, heads=2)).eval()
    reader = {"choice": "transcript", "why": "test", "lexicon": {},
              "transcript_head": {"group": "transcript_reader", "config": head.config.to_dict()}}
    bundle = write_tiny_bundle(tmp_path / "transcript", reader=reader,
                               extra_tensors={"transcript_reader": head.state_dict()})
    eng = Engine(bundle, device="cpu", cache_dir=False)
    assert eng.dictation_reader == "transcript"
    text = "No pleural effusion. A 6 mm nodule in the right upper lobe, likely benign."
    said = eng.read_dictation(None, 16000, transcript=text)
    assert [d.label for d in said] == list(LABELS)
    tower = create_text_tower(TextTowerConfig(backbone="all-MiniLM-L6-v2", pooling="mean", max_length=128,
                                              latent_dim=DIM))
    with torch.no_grad():
        expected = head(*pad_utterances(tower.token_states([text])))[0].argmax(-1)
    classes = eng.bundle.manifest.dictation_head.classes
    assert [d.status for d in said] == [classes[int(k)] for k in expected]
    del reader["transcript_head"]
    with pytest.raises(BundleError, match="transcript_head"):
        write_tiny_bundle(tmp_path / "broken", reader=reader, extra_tensors={"transcript_reader": head.state_dict()})
