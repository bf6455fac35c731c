"""The dictation check measured end to end: false alarms with the image side replaced by the truth,
and precision / recall of shown discrepancies against the planted slips."""

import numpy as np
import pytest

from engine.labels import DICTATION_CLASSES
from train.metrics import discrepancy_measures

P, U, A, N = (DICTATION_CLASSES.index(c) for c in ("present", "uncertain", "absent", "not mentioned"))
NAMES = ["effusion", "nodule", "emphysema"]


def test_perfect_reader_has_no_false_alarms_and_finds_every_planted_slip():
    labels = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1]])
    said = np.array([[P, A, N], [N, U, A], [A, N, P]])  # the nodule of study 2 is hedged
    said[1, 0] = N  # planted: effusion in the image, not dictated
    m = discrepancy_measures(said, said, labels, NAMES, image_positive=labels.astype(bool))
    assert m["false_alarm_studies"] == 0 and m["false_alarms"] == 0
    assert m["true_discrepancies"] == 1 and m["precision"] == 1.0 and m["recall"] == 1.0


def test_reader_errors_are_false_alarms_and_image_errors_cost_precision():
    labels = np.array([[1, 0, 0], [0, 0, 0], [0, 0, 1], [1, 0, 0]])
    said = np.array([[P, A, N], [N, N, N], [N, N, P], [N, N, N]])  # study 4: a planted omission
    read = said.copy()
    read[0, 0] = A  # present read as absent: a false "negated"
    read[2, 2] = U  # a hedge is never a discrepancy
    m = discrepancy_measures(read, said, labels, NAMES)
    assert m["false_alarm_studies"] == pytest.approx(0.25) and m["false_alarms"] == 1
    image = labels.astype(bool).copy()
    image[1, 1] = True  # the image model calls a nodule that is not there -> "omitted", not true
    m = discrepancy_measures(said, said, labels, NAMES, image_positive=image)
    assert m["shown"] == 2 and m["true_shown"] == 1 and m["precision"] == 0.5 and m["recall"] == 1.0
    # a finding that fails the reliability gate is not checked: its slips cannot be shown
    m = discrepancy_measures(said, said, labels, NAMES, image_positive=image, checked=np.array([False, True, True]))
    assert m["recall"] == 0.0 and m["checked_findings"] == ["nodule", "emphysema"]
