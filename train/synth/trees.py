"""Branching trees (pulmonary arteries with their bronchi, pulmonary veins) grown per lobe.

A tree is a list of :class:`Branch` segments in body-frame mm (points (z, y, x)). Growth is
a plain recursive bifurcation: each child turns 20–45° about a random axis, is pulled
towards the lobe's centre for the first generations, narrows by Murray-like ratios and
stops when it leaves its lobe or becomes thinner than can be seen at ~1.4 mm voxels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from train.synth.shapes import rotation_matrix


@dataclass
class Branch:
    p0: np.ndarray  # (z, y, x) mm
    p1: np.ndarray
    radius: float  # mm
    generation: int
    lobe: int


def _perpendicular(v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    a = rng.standard_normal(3)
    a -= (a @ v) * v
    return a / (np.linalg.norm(a) or 1.0)


def grow_tree(root, direction, radius: float, lobe: int, lobe_at, centroid, rng: np.random.Generator,
              max_generation: int = 6, min_radius: float = 0.9) -> list[Branch]:
    """Grow a bifurcating tree from ``root`` inside lobe ``lobe``.

    ``lobe_at(point) -> int`` tells which lobe a body-frame point lies in (0 = none).
    """
    out: list[Branch] = []
    stack = [(np.asarray(root, float), np.asarray(direction, float), float(radius), 0)]
    centroid = np.asarray(centroid, float)
    while stack:
        p, d, r, gen = stack.pop()
        d = d / (np.linalg.norm(d) or 1.0)
        length = float(np.clip(r * rng.uniform(5.0, 8.0), 6.0, 35.0))
        end = p + d * length
        if lobe_at(end) != lobe:
            end = p + d * length * 0.5
            if lobe_at(end) != lobe:
                continue
        out.append(Branch(p, end, r, gen, lobe))
        if gen >= max_generation:
            continue
        pull = centroid - end
        pull_norm = np.linalg.norm(pull)
        pull = pull / pull_norm if pull_norm > 1e-6 else np.zeros(3)
        w_pull = 0.6 * 0.6 ** gen
        axis = _perpendicular(d, rng)
        for k, ratio in enumerate((rng.uniform(0.74, 0.84), rng.uniform(0.6, 0.74))):
            rc = r * ratio
            if rc < min_radius:
                continue
            angle = rng.uniform(0.35, 0.8) * (1 if k == 0 else -1)
            # rotate the second child about a slightly different axis so branches fan out in 3-D
            ax = axis if k == 0 else rotation_matrix(d, rng.uniform(-0.6, 0.6)) @ axis
            child = rotation_matrix(ax, angle) @ d + w_pull * pull
            stack.append((end, child, rc, gen + 1))
    return out
