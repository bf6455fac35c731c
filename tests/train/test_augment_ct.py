"""The teacher's training-time jitter: translation with air padding, noise, gain; never flips."""

import numpy as np

from train.recipes import augment_ct


def test_shift_moves_content_and_pads_with_air():
    x = np.full((1, 6, 8, 8), -1.0, np.float32)
    x[0, 3, 4, 2] = 0.5  # a marker left of the midline (x index 2)
    seen = set()
    for seed in range(40):
        y = augment_ct(x, np.random.default_rng(seed), shift=(1, 2, 2))
        assert y.shape == x.shape and y.min() >= -1.0 and y.max() <= 1.0
        z, r, c = np.argwhere(y[0] == 0.5)[0]
        assert abs(z - 3) <= 1 and abs(r - 4) <= 2 and abs(c - 2) <= 2
        seen.add((int(z), int(r), int(c)))
    assert len(seen) > 5  # it does move


def test_no_augmentation_is_identity_and_noise_is_seeded():
    x = np.random.default_rng(0).uniform(-1, 1, (2, 4, 6, 6)).astype(np.float32)
    assert np.array_equal(augment_ct(x, np.random.default_rng(1)), x)
    a = augment_ct(x, np.random.default_rng(5), noise=0.02, scale=0.05)
    b = augment_ct(x, np.random.default_rng(5), noise=0.02, scale=0.05)
    assert np.array_equal(a, b) and 0.005 < np.abs(a - x).mean() < 0.1
