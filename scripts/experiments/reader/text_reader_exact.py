"""The learned transcript reader on the *exact* dictation text of a split (no ASR): the upper bound of the
ASR + transcript reader cascade, and the text ceiling of the reader design on that wording.

    python scripts/experiments/reader/text_reader_exact.py --data build/bundle-data --reader RUN/text_reader \\
        --split valid test
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from engine.labels import DICTATION_CLASSES, LABELS  # noqa: E402
from train.metrics import dictation_f1  # noqa: E402
from train.text_reader import _dictations, load_text_reader, read_texts  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--reader", type=Path, required=True)
    p.add_argument("--split", nargs="+", default=["valid", "test"])
    a = p.parse_args()
    tower, head = load_text_reader(a.reader)
    for split in a.split:
        # the test root is a CT-RATE layout of its own whose valid split is the test set
        data, name = (a.data / "test-view", "valid") if split == "test" else (a.data, split)
        if split == "test":
            data.mkdir(exist_ok=True)
            link = data / "ct-rate"
            if not link.exists():
                link.symlink_to((a.data / "ct-rate-test").resolve())
        rows = _dictations(data, name)
        pred = read_texts(tower, head, [t for t, _ in rows])
        f1 = dictation_f1(pred, [m for _, m in rows], DICTATION_CLASSES, LABELS)
        pc = " / ".join(f"{f1['per_class'][c]:.2f}" for c in DICTATION_CLASSES)
        print(json.dumps({"split": split, "n": len(rows), "macro_f1": round(f1["macro_f1"], 3),
                          "per_class": pc, "present_read_absent": round(f1["present_read_absent"], 3)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
