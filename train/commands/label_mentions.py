"""``speechct-train label-mentions``: four-state mentions for a CT-RATE-layout tree that has none.

Real CT-RATE carries 18 binary labels per volume, which say what the image shows, not what the report
says of each finding. This reads every report (``Findings_EN`` then ``Impressions_EN``) with the rule
labeler (:mod:`train.labeler`, whose lexicon is the report grammar's training lists) and writes
``dataset/multi_abnormality_labels/{split}_mentions_chexpert.csv`` (:mod:`train.mentions`), so a
dictation head can be trained on the real reports. An existing mentions file is kept unless ``--force``.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from engine.errors import DataError


def add_parser(sub) -> None:
    p = sub.add_parser("label-mentions", help="write four-state mentions for CT-RATE reports (rule labeler)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ct-rate", required=True, type=Path, help="a CT-RATE-layout root (holds dataset/)")
    p.add_argument("--split", nargs="+", default=["train", "valid"], choices=("train", "valid"))
    p.add_argument("--force", action="store_true", help="replace an existing mentions file")
    p.set_defaults(func=run)


def run(args) -> int:
    from engine.labels import LABELS
    from train.data import REPORTS_CSV, dataset_dir, read_csv_rows
    from train.labeler import label_report, training_lexicon
    from train.mentions import mentions_csv_bytes, mentions_path
    from train.synth.ctrate import _atomic_write_bytes

    ds = dataset_dir(args.ct_rate)
    lex = training_lexicon()
    for split in args.split:
        out = mentions_path(ds, split)
        if out.exists() and not args.force:
            raise DataError("a mentions file is already here (pass --force to replace it)", out)
        path = ds / "radiology_text_reports" / REPORTS_CSV[split]
        rows = read_csv_rows(path, ("VolumeName", "Findings_EN"), "reports")
        labelled = []
        counts: Counter = Counter()
        for row in rows:
            text = " ".join(x for x in ((row.get("Findings_EN") or "").strip(),
                                        (row.get("Impressions_EN") or "").strip()) if x)
            states = label_report(text, lex)
            counts.update(states.values())
            labelled.append((row["VolumeName"].strip(), states))
        _atomic_write_bytes(out, mentions_csv_bytes(labelled))
        total = max(1, len(labelled) * len(LABELS))
        shares = ", ".join(f"{k} {100 * v / total:.1f} %" for k, v in sorted(counts.items()))
        print(f"{split}: {len(labelled)} reports -> {out} ({shares})")
    return 0
