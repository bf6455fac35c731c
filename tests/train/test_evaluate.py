"""train.evaluate end to end on a tiny hand-built CT-RATE + Speech-RATE tree with stand-in models.

The stand-ins make the expected outcome known: study i's volume is a constant HU that encodes i,
each WAV a constant sample value that encodes its study (or prompt); embeddings are built from
the labels through a fixed random map A, so the teacher and the distilled student separate the
findings well, the naive student (more noise) worse, and the perfect dictation head scores F1 1.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import soundfile as sf

from engine.labels import LABELS, prompt_pair
from engine.preprocess import PreprocessSpec
from train import evaluate as E
from train.cascade import run_cascade

N, D = 48, 32
SPEC = PreprocessSpec("tiny", (5.0, 5.0, 5.0), (4, 8, 8), (-1000.0, 1000.0), 1000.0, -1.0)
VOICES = ("us-f2", "mb-us3")  # a training voice and a held-out voice of train.synth.voices


def _csv(path: Path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def _wav(path: Path, code: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.full(1600, code / 10000.0, np.float32), 16000, subtype="PCM_16")


def _code(wave: np.ndarray) -> int:
    return int(round(float(np.median(wave)) * 10000))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(0)
    labels = (rng.random((N, 18)) < 0.35).astype(int)
    labels[0], labels[1] = 1, 0
    mentions = np.where(labels == 1, 1, np.where(rng.random((N, 18)) < 0.5, 0, -1))
    A = rng.normal(size=(D, 18))
    ct = (2 * labels - 1) @ A.T + 0.8 * rng.normal(size=(N, D)) * np.sqrt(18)
    names = [f"valid_{i + 1}_a_1.nii.gz" for i in range(N)]
    findings = [f"Findings of study {i}." for i in range(N)]
    ds = root / "ct-rate" / "dataset"
    for i, name in enumerate(names):
        folder = ds / "valid_fixed" / f"valid_{i + 1}" / f"valid_{i + 1}_a"
        folder.mkdir(parents=True)
        hu = np.full((8, 8, 4), -900 + 20 * i, np.int16)  # NIfTI (i, j, k); constant, orientation moot
        nib.save(nib.Nifti1Image(hu, np.diag([5.0, 5.0, 5.0, 1.0])), str(folder / name))
    _csv(ds / "radiology_text_reports" / "validation_reports.csv",
         ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"],
         [[n, "", "", f, ""] for n, f in zip(names, findings)])
    _csv(ds / "multi_abnormality_labels" / "valid_predicted_labels.csv", ["VolumeName", *LABELS],
         [[n, *row] for n, row in zip(names, labels)])
    _csv(ds / "multi_abnormality_labels" / "valid_mentions_chexpert.csv", ["VolumeName", *LABELS],
         [[n, *["" if v == -1 else v for v in row]] for n, row in zip(names, mentions)])  # -1 here: not mentioned
    sroot = root / "speech-rate"
    rows = []
    for i, name in enumerate(names):
        stem = name.removesuffix(".nii.gz")
        rel = f"dataset/valid/valid_{i + 1}/valid_{i + 1}_a/{stem}_findings.wav"
        _wav(sroot / rel, 1 + i)
        rows.append([name, rel, VOICES[i % 2], "espeak", 160, 50, "none", 0.1])
    _csv(sroot / "dataset" / "valid_manifest.csv",
         ["volume", "path", "voice", "engine", "rate", "pitch", "augmentation", "duration"], rows)
    prompt_rows = []
    for voice in (*VOICES, "mb-en1"):  # two held-out prompt voices
        for j, label in enumerate(LABELS):
            for pol, k in (("present", 0), ("absent", 1)):
                rel = f"{voice}/{j}_{pol}.wav"
                _wav(sroot / "prompts" / rel, 1000 + 2 * j + k)
                prompt_rows.append([label, pol, voice, rel])
    _csv(sroot / "prompts" / "manifest.csv", ["label", "polarity", "voice", "path"], prompt_rows)
    return dict(root=root, labels=labels, mentions=mentions, A=A, ct=ct, findings=findings, rng=rng)


def _models(w, naive_noise=3.0):
    rng = np.random.default_rng(1)
    A, ct = w["A"], w["ct"]
    text_of = {f: ct[i] + 0.3 * rng.normal(size=D) for i, f in enumerate(w["findings"])}
    for j, label in enumerate(LABELS):
        p, a = prompt_pair(label)
        text_of[p], text_of[a] = A[:, j], -A[:, j]

    def embed_ct(volumes):
        idx = [int(round((float(np.mean(v)) * 1000 + 900) / 20)) for v in volumes]
        return ct[idx]

    def speech(noise, seed):
        r = np.random.default_rng(seed)
        table = {}

        def embed(waves):
            out = []
            for wv in waves:
                c = _code(wv)
                if c not in table:
                    base = ct[c - 1] if c < 1000 else (1 - 2 * ((c - 1000) % 2)) * A[:, (c - 1000) // 2]
                    table[c] = base + noise * r.normal(size=D) * np.linalg.norm(base) / np.sqrt(D)
                out.append(table[c])
            return np.stack(out)

        return embed, table

    distilled, dtable = speech(0.2, 2)
    naive, _ = speech(naive_noise, 3)

    def head(emb):  # a perfect head: find the study, return its mentions one-hot
        codes = [next(c for c, v in dtable.items() if np.allclose(v, e)) for e in emb]
        cls = np.stack([np.select([w["mentions"][c - 1] == 1, w["mentions"][c - 1] == 0], [0, 2], 3) for c in codes])
        return np.eye(4)[cls] * 10

    def frame_head(waves):  # the naive embedding + a perfect head that reads the audio itself (dictation_frames)
        cls = np.stack([np.select([w["mentions"][_code(v) - 1] == 1, w["mentions"][_code(v) - 1] == 0], [0, 2], 3)
                        for v in waves])
        return naive(waves), np.eye(4)[cls] * 10

    return E.EvalModels(spec=SPEC, logit_scale=20.0, embed_ct=embed_ct,
                        embed_text=lambda texts: np.stack([text_of[t] for t in texts]),
                        speech={"distilled": distilled, "naive": naive}, dictation={"distilled": head},
                        dictation_frames={"naive": frame_head})


def _transcribe(w):
    def transcribe(wave):
        c = _code(wave)
        if c < 1000:
            return w["findings"][c - 1]
        j, k = divmod(c - 1000, 2)
        return prompt_pair(LABELS[j])[k]

    return transcribe


def test_evaluate_end_to_end(world, tmp_path):
    cfg = E.EvalConfig(n_boot=100, seed=0, cascade_n=10, cascade_prompt_voices=1)
    res = E.evaluate_bundle(_models(world), world["root"] / "ct-rate", world["root"] / "speech-rate", "valid",
                            config=cfg, out_dir=tmp_path, transcribe=_transcribe(world), progress=False)
    assert set(res["groups"]) == {E.GROUP_TRAIN, E.GROUP_HELDOUT}
    assert sum(g["n"] for g in res["groups"].values()) == N
    g = res["groups"][E.GROUP_HELDOUT]
    assert g["voices"] == ["mb-us3"] and g["prompt_voices"] == ["mb-en1", "mb-us3"]
    sy = g["systems"]
    assert set(sy) == set(E.SYSTEMS)
    auc = {k: v["zero_shot"]["macro"]["auroc"]["value"] for k, v in sy.items()}
    assert auc["text teacher"] > 0.85 and auc["distilled student"] > 0.85
    assert auc["distilled student"] > auc["naive student"] + 0.05
    for s in sy.values():
        lo, hi = s["zero_shot"]["macro"]["auroc"]["ci"]
        assert lo < hi
    assert sy["distilled student"]["prompts"] == "spoken"
    assert sy["distilled student"]["dictation"]["macro_f1"] == 1.0
    assert sy["naive student"]["dictation"]["macro_f1"] == 1.0  # through the frames path
    r = sy["distilled student"]["retrieval"]["query_to_ct"]
    assert r["k"][1]["recall"] > 0.8 and r["k"][1]["random"] == pytest.approx(1 / g["n"])
    casc = sy["ASR cascade"]
    assert casc["n"] == 10 and casc["seconds_per_report"] > 0 and casc["prompts"] == "spoken, transcribed"
    assert casc["prompt_voices"] == ["mb-en1"]  # cascade_prompt_voices=1; the students use both
    assert casc["retrieval"]["query_to_ct"]["k"][1]["random"] == pytest.approx(0.1)
    assert set(casc["same_subset_retrieval"]) == {"text teacher", "naive student", "distilled student"}
    # its dictation reader is the rule labeler on the transcripts, compared pairwise with the speech readers
    assert set(casc["dictation"]["per_class"]) == {"present", "uncertain", "absent", "not mentioned"}
    paired = casc["dictation_paired"]["distilled student − cascade"]
    assert paired["n"] == 10 and paired["a"] == 1.0 and paired["ci"][0] <= paired["diff"] <= paired["ci"][1]
    assert "Dictation readers" in (tmp_path / "evaluation.md").read_text()
    # the cascade transcribes perfectly here, so its scores equal the teacher's on that subset
    assert casc["report_zero_shot"]["macro_auroc"] > 0.8
    assert "distilled − naive" in g["paired"] and g["paired"]["distilled − naive"]["auroc"]["diff"] > 0
    assert res["ct_to_ct"]["gallery"] == N - int((world["labels"].sum(1) == 0).sum())
    on_disk = json.loads((tmp_path / "evaluation.json").read_text())
    assert on_disk["groups"][E.GROUP_HELDOUT]["n"] == g["n"]
    md = (tmp_path / "evaluation.md").read_text()
    assert "| distilled student | spoken |" in md and "R@100" in md and "paired bootstrap" in md

    thresholds, summary = E.bundle_thresholds(tmp_path, evaluation=tmp_path / "evaluation.json")
    assert set(thresholds["values"]) == set(LABELS) and "ROC-corner" in thresholds["method"]
    teacher = res["text_teacher_all"]["zero_shot"]["per_finding"]
    # the reliability gate reads the lower CI bound; the point estimate travels beside it
    assert thresholds["auroc_statistic"] == "ci_lower" and thresholds["auroc_ci"]["n_boot"] == 100
    assert thresholds["auroc"] == {k: pytest.approx(v["ci"]["auroc"][0]) for k, v in teacher.items()}
    assert thresholds["auroc_point"] == {k: pytest.approx(v["auroc"]) for k, v in teacher.items()}
    assert all(thresholds["auroc"][k] < thresholds["auroc_point"][k] for k in teacher)
    from train.export import _gate_provenance

    assert _gate_provenance(thresholds).startswith("thresholds.auroc = lower bound of each finding's 95 % bootstrap CI")
    assert "point estimate" in _gate_provenance({"auroc": {"Emphysema": 0.8}}) and "none" in _gate_provenance(None)
    assert summary["groups"][E.GROUP_HELDOUT]["systems"]["distilled student"]["dictation_macro_f1"] == 1.0


def test_training_voices_come_from_the_training_data_when_given(world, tmp_path):
    """A separate test set read by other voices: its own train manifest does not name the voices the
    models learned from; ``training_speech`` does."""
    trained = tmp_path / "trained-speech"
    (trained / "dataset").mkdir(parents=True)
    _csv(trained / "dataset" / "train_manifest.csv", ["volume", "path", "voice"], [["train_1_a_1.nii.gz", "x.wav", "mb-us3"]])
    cfg = E.EvalConfig(n_boot=0, seed=0, cascade_n=0)
    res = E.evaluate_bundle(_models(world), world["root"] / "ct-rate", world["root"] / "speech-rate", "valid",
                            config=cfg, progress=False, training_speech=trained)
    assert res["groups"][E.GROUP_TRAIN]["voices"] == ["mb-us3"]
    assert "mb-us3" not in res["groups"].get(E.GROUP_HELDOUT, {}).get("voices", [])


def test_sixteen_labels_calibration_and_no_speech(world):
    cfg = E.EvalConfig(n_boot=20, labels_mode=16, threshold_on="calibration", cascade_n=0)
    res = E.evaluate_bundle(_models(world), world["root"] / "ct-rate", None, "valid", config=cfg, progress=False)
    assert list(res["groups"]) == ["all studies"]
    zs = res["groups"]["all studies"]["systems"]["text teacher"]["zero_shot"]
    assert len(zs["per_finding"]) == 16 and zs["threshold_on"] == "calibration"
    assert zs["n_studies"] == N - round(0.3 * N)
    assert any("no spoken reports" in n for n in res["notes"])


def test_run_cascade_times_and_embeds(world):
    waves = [np.full(1600, (1 + i) / 10000.0, np.float32) for i in range(3)]
    out = run_cascade(waves, lambda texts: np.ones((len(texts), 4)), _transcribe(world), batch=2)
    assert out.transcripts == world["findings"][:3]
    assert out.embeddings.shape == (3, 4) and len(out.asr_seconds) == 3
    assert out.timing()["n"] == 3 and out.seconds_per_report >= 0


def test_cli_registered_and_errors_are_one_line(tmp_path, capsys):
    from train.cli import build_parser, main

    args = build_parser().parse_args(["evaluate", "--bundle", str(tmp_path), "--data", str(tmp_path),
                                      "--labels", "16", "--threshold-on", "calibration", "--bootstrap", "10"])
    assert args.labels == 16 and args.threshold_on == "calibration" and args.cascade_n == 100
    assert args.probe_folds == 5 and args.ceiling is None
    assert main(["evaluate", "--bundle", str(tmp_path / "nope"), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ct-rate" in err[0]
    (tmp_path / "ct-rate" / "dataset").mkdir(parents=True)
    assert main(["evaluate", "--bundle", str(tmp_path / "nope"), "--data", str(tmp_path)]) == 2
    assert "neither a bundle" in capsys.readouterr().err
    assert main(["evaluate", "--bundle", str(tmp_path / "nope"), "--data", str(tmp_path),
                 "--ceiling", str(tmp_path / "none.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "recorded ceiling" in err[0] and "none.json" in err[0]


@pytest.mark.slow
def test_real_modules_random_init_with_real_asr(tmp_path):
    """Real engine modules (random-init smoke CTViT, MiniLM text tower, tiny Whisper student,
    dictation head) and the real faster-whisper cascade on W2a's tiny tree: every row, every
    block, timings; then a bundle-style thresholds section from the written evaluation."""
    import torch

    from engine.models.dictation import DictationHead, DictationHeadConfig
    from tests.train.training_fixtures import make_tiny_data, tiny_student
    from train.recipes import build_teacher, load_run_config, prompt_texts

    torch.set_num_threads(1)
    data = make_tiny_data(tmp_path / "data", n_train=4, n_valid=6)
    cfg = load_run_config("smoke")
    model, text = build_teacher(cfg)
    embed_text = E.text_embedder(text)
    models = E.EvalModels(spec=PreprocessSpec.from_dict(cfg["preprocess"]), logit_scale=model.logit_scale.value,
                          embed_ct=E.ct_embedder(model.ct), embed_text=embed_text,
                          speech={"distilled": E.speech_embedder(tiny_student(0)),
                                  "naive": E.speech_embedder(tiny_student(1))},
                          dictation={"distilled": E.head_logits(DictationHead(DictationHeadConfig(dim=64, hidden=0)))})
    from engine.findings import PromptBank

    models.text_prompts = PromptBank.from_rows(prompt_texts(), embed_text(prompt_texts()), LABELS)
    out = tmp_path / "run" / "evaluation"
    res = E.evaluate_bundle(models, data / "ct-rate", data / "speech-rate", "valid",
                            config=E.EvalConfig(n_boot=50, cascade_n=2), out_dir=out,
                            synthesize_missing_prompts=False, progress=False)
    g = res["groups"][E.GROUP_TRAIN]  # the tree's voice "tone" read the train split too
    assert set(g["systems"]) == set(E.SYSTEMS) and g["n"] == 6
    casc = g["systems"]["ASR cascade"]
    assert casc["n"] == 2 and casc["timing"]["asr_s_per_report"] > 0 and res["timings"]["asr_load_s"] > 0
    assert all(isinstance(t, str) for t in casc["transcripts"].values())
    assert g["systems"]["distilled student"]["dictation"]["support"]["not mentioned"] == 6 * 16
    thresholds, summary = E.bundle_thresholds(tmp_path / "run")
    assert set(thresholds["values"]) == set(LABELS)


@pytest.mark.slow
def test_transcriber_understands_a_spoken_finding():
    from train.cascade import Transcriber
    from train.synth.voices import get_voice, speak

    audio = speak("The heart is enlarged. There is no pleural effusion.", get_voice("us-m3"), 150, 50)
    text = Transcriber().transcribe(audio).lower()
    assert "heart" in text and "effusion" in text  # measured: "the heart in enlarge. there is no plural effusion."


def test_voice_groups_and_training_voices(tmp_path):
    from train.synth.voices import train_voices

    assert E.training_voices([tmp_path]) == {v.id for v in train_voices()}  # no train manifest: ours
    (tmp_path / "dataset").mkdir()
    _csv(tmp_path / "dataset" / "train_manifest.csv", ["volume", "path", "voice"],
         [["train_1_a_1.nii.gz", "x.wav", "alice"], ["train_2_a_1.nii.gz", "y.wav", "bob"]])
    train = E.training_voices([tmp_path])
    assert train == {"alice", "bob"}
    assert E.voice_group("alice", train) == E.GROUP_TRAIN
    assert E.voice_group("carol", train) == E.GROUP_HELDOUT
    assert E.voice_group(None, train) == E.GROUP_RECORDINGS
    # a walked tree (no manifest: real recordings) has no voices
    _wav(tmp_path / "rec" / "dataset" / "valid" / "valid_3" / "valid_3_a" / "valid_3_a_1_findings.wav", 5)
    spoken = E.spoken_reports([tmp_path / "rec"], "valid")
    assert [(s.volume_name, s.voice) for s in spoken] == [("valid_3_a_1.nii.gz", None)]
    recs = [E.PromptRecording("A", "present", v, Path("x")) for v in ("alice", "carol", "dave")]
    assert [r.voice for r in E.prompts_for_group(recs, E.GROUP_HELDOUT, train)] == ["carol", "dave"]
    assert len(E.prompts_for_group(recs, E.GROUP_RECORDINGS, train)) == 3


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["embedding", "frames"])
def test_models_from_bundle_with_whisper_base(tmp_path, kind):
    """A bundle written with engine.weights.bundle (random-init smoke CT encoder, MiniLM projection,
    whisper-base top-2 student, dictation head of either kind, text prompts) opens as EvalModels
    whose callables run."""
    import torch

    from engine.models.ct import CTEncoder, CTEncoderConfig
    from engine.models.dictation import (
        CLASSES,
        DictationHead,
        DictationHeadConfig,
        FrameDictationHead,
        FrameDictationHeadConfig,
    )
    from engine.models.speech import load_speech_config
    from engine.models.text import create_text_tower
    from engine.weights.bundle import save_bundle
    from engine.weights.factory import speech_student_from_backbone
    from engine.weights.manifest import speech_entry
    from train.recipes import load_run_config, prompt_texts

    torch.set_num_threads(1)
    cfg = load_run_config("smoke")
    ct = CTEncoder(CTEncoderConfig.from_dict(cfg["ct_encoder"]))
    text = create_text_tower("minilm", latent_dim=64)
    sc = load_speech_config("whisper-base-top2")
    sc.latent_dim = 64
    student = speech_student_from_backbone(sc)
    head = (DictationHead(DictationHeadConfig(dim=64, hidden=0)) if kind == "embedding" else
            FrameDictationHead(FrameDictationHeadConfig(dim=512, hidden=16, heads=2)))
    with torch.no_grad():
        prompts = text.encode(prompt_texts())
    manifest = {
        "labels": list(LABELS), "preprocess": cfg["preprocess"], "ct_encoder": ct.config.to_dict(),
        "speech": speech_entry(sc.to_dict(), student.backbone.sha256), "text": text.manifest_entry(),
        "space": {"dim": 64, "logit_scale": 10.0},
        "prompts": {"kind": "text", "texts": prompt_texts(), "group": "prompts"},
        "dictation_head": {"labels": list(LABELS), "classes": list(CLASSES), "group": "dictation_head",
                           "config": head.config.to_dict()},
        "provenance": {"test": True},
    }
    save_bundle(tmp_path / "b", manifest=manifest, tensors={
        "ct_encoder": ct.state_dict(), "speech_head": student.trainable_state_dict(),
        "text_head": text.trainable_state_dict(), "dictation_head": head.state_dict(),
        "prompts": {"embeddings": prompts}})
    models = E.models_from_bundle(tmp_path / "b")
    assert models.logit_scale == 10.0 and set(models.speech) == {"distilled"}
    vol = np.zeros(tuple(cfg["preprocess"]["shape"]), np.float32)
    assert models.embed_ct([vol, vol]).shape == (2, 64)
    with torch.no_grad():
        want = text.encode(["Emphysema is present."]).numpy()
    np.testing.assert_allclose(models.embed_text(["Emphysema is present."]), want, atol=1e-5)
    emb = models.speech["distilled"]([np.zeros(16000, np.float32)])
    assert emb.shape == (1, 64)
    if kind == "embedding":
        assert models.dictation["distilled"](emb).shape == (1, 18, 3) and not models.dictation_frames
    else:
        waves = [np.zeros(16000, np.float32), np.ones(8000, np.float32)]
        both, logits = models.dictation_frames["distilled"](waves)
        assert logits.shape == (2, 18, 3) and not models.dictation
        np.testing.assert_allclose(both, models.speech["distilled"](waves), atol=1e-5)  # the same pass
    torch.testing.assert_close(models.text_prompts.present[0], prompts[0])


def _ceiling_file(path: Path, names: list[str], scores: np.ndarray) -> Path:
    path.write_text(json.dumps({"kind": "test CNN", "labels": list(LABELS), "split": "valid",
                                "scores": {n: row.tolist() for n, row in zip(names, scores)}}))
    return path


def test_per_finding_skill_probe_ceiling_and_teacher_training(world, tmp_path):
    from sklearn.metrics import roc_auc_score

    models = _models(world)
    models.provenance["aux_label_weight"] = E.aux_label_weight({"lr": 1e-3, "aux_label_weight": 1.0})
    names = [f"valid_{i + 1}_a_1.nii.gz" for i in range(N)]
    order = np.argsort(names)  # evaluation orders studies by volume name
    rng = np.random.default_rng(5)
    cnn = world["labels"] + 1.5 * rng.random(world["labels"].shape)  # overlapping: AUROC < 1
    ceiling = _ceiling_file(tmp_path / "cnn.json", names, cnn)
    cfg = E.EvalConfig(n_boot=50, cascade_n=0)
    res = E.evaluate_bundle(models, world["root"] / "ct-rate", None, "valid", config=cfg, ceiling=ceiling,
                            out_dir=tmp_path / "out", progress=False)
    zs = res["text_teacher_all"]["zero_shot"]
    per = zs["per_finding"]["Cardiomegaly"]
    assert {"auprc", "ece", "centred_auroc", "prevalence"} <= set(per) and per["ci"]["centred_auroc"][0] < 1
    # the embeddings are a linear map of the labels: the probe reads them, on held-out folds
    probe = res["linear_probe"]
    assert probe["macro"]["value"] > 0.8 and "5-fold" in probe["method"] and len(probe["per_finding"]) == 18
    y = world["labels"][order]
    j = LABELS.index("Emphysema")
    assert res["cnn_ceiling"]["per_finding"]["Emphysema"]["auroc"] == pytest.approx(roc_auc_score(y[:, j],
                                                                                                  cnn[order, j]))
    assert res["cnn_ceiling"]["kind"] == "test CNN" and res["cnn_ceiling"]["macro"]["ci"][0] < 1
    assert res["teacher_training"]["aux_label_weight"] == 1.0
    md = (tmp_path / "out" / "evaluation.md").read_text()
    assert "## Per finding: the image model on all 48 studies" in md
    assert "with the auxiliary label loss (teacher.aux_label_weight = 1)" in md
    row = next(line for line in md.splitlines() if line.startswith("| Emphysema |"))
    assert row.count("|") == 10 and row.rstrip(" |").endswith(("checked", "weak")) and "not recorded" not in row
    assert "| **macro** |" in md and "recorded in" in md
    summary = E.summary_for_bundle(res)
    assert {"probe_auroc", "cnn_auroc", "centred_auroc", "auroc_ci"} <= set(summary["per_finding"]["Emphysema"])
    assert summary["teacher_training"]["aux_label_weight"] == 1.0

    # a ceiling measured on other volumes is said, not scored; a file that is not one is refused in one line
    partial = _ceiling_file(tmp_path / "partial.json", names[:10], cnn[:10])
    res = E.evaluate_bundle(_models(world), world["root"] / "ct-rate", None, "valid", progress=False,
                            config=E.EvalConfig(n_boot=0, cascade_n=0, probe_folds=0), ceiling=partial)
    assert "38 of the 48" in res["cnn_ceiling"]["not_comparable"] and "linear_probe" not in res
    assert res["teacher_training"]["aux_label_weight"] is None  # the stand-in models do not say
    assert "not shown" in E.to_markdown(res) and "unknown" in E.to_markdown(res)
    (tmp_path / "bad.json").write_text('{"scores": {}}')
    from engine.errors import DataError

    with pytest.raises(DataError, match="not a recorded ceiling"):
        E.recorded_ceiling(tmp_path / "bad.json", names, world["labels"], LABELS, cfg)
    short = _ceiling_file(tmp_path / "short.json", names, cnn[:, :5])
    with pytest.raises(DataError, match="one number per label"):
        E.recorded_ceiling(short, names, world["labels"], LABELS, cfg)
    assert E.aux_label_weight(None) is None and E.aux_label_weight({"lr": 1.0}) == 0.0
    assert "without the auxiliary label loss" in E.teacher_training(0.0)["zero_shot"]


def test_gate_falls_back_to_the_point_estimate_without_a_bootstrap(world):
    res = E.evaluate_bundle(_models(world), world["root"] / "ct-rate", None, "valid", progress=False,
                            config=E.EvalConfig(n_boot=0, cascade_n=0, probe_folds=0))
    gate = E.gate_auroc(res["text_teacher_all"]["zero_shot"])
    assert gate["auroc_statistic"] == "point" and "auroc_point" not in gate
    assert gate["auroc"]["Emphysema"] == res["text_teacher_all"]["zero_shot"]["per_finding"]["Emphysema"]["auroc"]
    md = E.to_markdown(res)
    assert "point estimate of its zero-shot AUROC (no bootstrap here)" in md
    assert next(line for line in md.splitlines() if line.startswith("| Emphysema |")).rstrip(" |").endswith(
        ("checked", "weak"))


def test_cnn_ceiling_script_on_tiny_data(tmp_path):
    """scripts/experiments/cnn_ceiling.py trains, checkpoints, resumes and writes a JSON that evaluate reads."""
    import importlib.util

    import torch

    from tests.train.training_fixtures import make_tiny_data
    from train.recipes import load_run_config

    torch.set_num_threads(1)
    spec_path = tmp_path / "smoke.json"
    spec_path.write_text(json.dumps(load_run_config("smoke")["preprocess"]))
    data = make_tiny_data(tmp_path / "data", n_train=6, n_valid=6)
    mod_spec = importlib.util.spec_from_file_location(
        "cnn_ceiling", Path(__file__).resolve().parents[2] / "scripts" / "experiments" / "cnn_ceiling.py")
    script = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(script)
    argv = ["--data", str(data), "--spec", str(spec_path), "--width", "4", "--epochs", "1", "--batch", "3",
            "--threads", "1", "--checkpoint-every", "1", "--log-every", "1"]
    assert script.main(argv) == 0
    out = data / "cnn_ceiling_valid.json"
    rec = json.loads(out.read_text())
    assert rec["split"] == "valid" and len(rec["scores"]) == 6 and rec["train"]["steps"] == 2
    assert all(len(v) == 18 and all(0 <= p <= 1 for p in v) for v in rec["scores"].values())
    assert out.with_suffix(".ckpt.pt").is_file()
    first = out.with_suffix(".ckpt.pt").stat().st_mtime_ns
    assert script.main([*argv, "--epochs", "2"]) == 0  # resumes at step 2 and trains one more epoch
    assert json.loads(out.read_text())["train"]["steps"] == 4 and out.with_suffix(".ckpt.pt").stat().st_mtime_ns > first
    assert script.main([*argv, "--width", "2"]) == 0  # another network: starts afresh
    assert json.loads(out.read_text())["train"]["steps"] == 2
    from train.data import CTRateIndex

    records = sorted(CTRateIndex(data / "ct-rate", "valid").records, key=lambda r: r.volume_name)
    got = E.recorded_ceiling(out, [r.volume_name for r in records], np.stack([r.labels for r in records]), LABELS,
                             E.EvalConfig(n_boot=20))
    nodule = got["per_finding"]["Lung nodule"]
    assert 0 <= nodule["auroc"] <= 1 and nodule["positives"] == 3


def test_models_from_bundle_builds_every_part_through_the_engine_factory(monkeypatch):
    """One bundle loader: the evaluation stored in a bundle is measured on the parts the product builds."""
    from engine.weights import factory
    from tests.engine.tiny_bundle import tiny_bundle_path

    built = []
    parts = dict(factory.PARTS)
    for name, builder in parts.items():
        monkeypatch.setitem(factory.PARTS, name, lambda b, _n=name, _f=builder, **kw: built.append(_n) or _f(b, **kw))
    models = E.models_from_bundle(tiny_bundle_path())
    assert set(built) == {"spec", "ct", "text", "prompts", "speech", "dictation"}
    assert models.labels == tuple(LABELS) and "distilled" in models.speech


def test_transcript_reader_is_scored_on_the_cascade_transcripts(world, tmp_path, monkeypatch):
    import torch

    from engine.models.dictation import FrameDictationHead, FrameDictationHeadConfig
    from train import text_reader

    class Tower:  # token states that spell out the text: enough to check the plumbing, not a language model
        def token_states(self, texts):
            return [torch.tensor([[float(ord(ch) % 7), float(len(t))] for ch in t[:40] or " "]) for t in texts]

    torch.manual_seed(0)
    head = FrameDictationHead(FrameDictationHeadConfig(dim=2, hidden=8, stride=1, kernel=3, heads=2)).eval()
    seen = {}
    monkeypatch.setattr(text_reader, "load_text_reader", lambda folder: seen.setdefault("folder", folder) and
                        (Tower(), head))
    cfg = E.EvalConfig(n_boot=50, seed=0, cascade_n=6, cascade_prompt_voices=1)
    res = E.evaluate_bundle(_models(world), world["root"] / "ct-rate", world["root"] / "speech-rate", "valid",
                            config=cfg, out_dir=tmp_path, transcribe=_transcribe(world), progress=False,
                            text_reader=tmp_path / "reader")
    assert seen["folder"] == tmp_path / "reader"
    tr = res["groups"][E.GROUP_HELDOUT]["systems"]["ASR cascade"]["transcript_reader"]
    assert 0.0 <= tr["dictation"]["macro_f1"] <= 1.0 and tr["seconds_per_report"] > 0
    assert tr["discrepancy"]["n_studies"] == 6 and "precision" in tr["discrepancy"]
    assert tr["paired"]["distilled student − transcript reader"]["n"] == 6
    md = (tmp_path / "evaluation.md").read_text()
    assert "| ASR + transcript reader |" in md and "the dictation check" in md
