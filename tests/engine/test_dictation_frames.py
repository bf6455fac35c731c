"""The frame-level dictation head: shapes, padding, configs, and that it can learn what a pooled
embedding cannot — a negation that changes a finding's class while the words stay the same."""

from __future__ import annotations

import pytest
import torch

from engine.models.dictation import (
    DictationHead,
    DictationHeadConfig,
    FrameDictationHead,
    FrameDictationHeadConfig,
    build_head,
    dictation_loss,
    head_config_from_dict,
    pad_utterances,
)


def small_head(**kw) -> FrameDictationHead:
    torch.manual_seed(0)
    return FrameDictationHead(FrameDictationHeadConfig(**{"dim": 16, "hidden": 16, "n_labels": 3, "heads": 2,
                                                          "kernel": 3, "dropout": 0.0, **kw}))


def test_shapes_and_padding_never_reaches_a_real_output():
    head = small_head().eval()
    a, b = torch.randn(37, 16), torch.randn(12, 16)
    frames, lengths = pad_utterances([a, b])
    assert frames.shape == (2, 37, 16) and lengths.tolist() == [37, 12]
    with torch.no_grad():
        both = head(frames, lengths)
        alone = head(b[None], torch.tensor([12]))
        # garbage past the end must not matter either
        noisy = frames.clone()
        noisy[1, 12:] = 1e3
        again = head(noisy, lengths)
    assert both.shape == (2, 3, 4)  # four mention states
    torch.testing.assert_close(both[1], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, both, atol=1e-5, rtol=1e-5)


def test_downsample_averages_real_frames_only():
    head = small_head(stride=3)
    frames = torch.arange(7, dtype=torch.float32)[None, :, None].expand(1, 7, 16).clone()
    pad = torch.cat([frames, torch.full((1, 2, 16), 99.0)], dim=1)
    x, n = head.downsample(pad, torch.tensor([7]))
    assert n.tolist() == [3]
    assert x[0, :3, 0].tolist() == [1.0, 4.0, 6.0]  # (0+1+2)/3, (3+4+5)/3, the partial last group: 6


def test_configs_by_kind_and_legacy_bundles():
    legacy = {"dim": 8, "hidden": 0, "n_labels": 18, "dropout": 0.1}  # written before "kind" existed
    assert isinstance(build_head(head_config_from_dict(legacy)), DictationHead)
    cfg = FrameDictationHeadConfig(dim=8, hidden=8, heads=2)
    assert isinstance(build_head(head_config_from_dict(cfg.to_dict())), FrameDictationHead)
    with pytest.raises(ValueError, match="unknown dictation head kind"):
        head_config_from_dict({"kind": "lstm"})
    with pytest.raises(ValueError, match="multiple of heads"):
        FrameDictationHeadConfig(hidden=10, heads=4)
    with pytest.raises(ValueError, match="kind must be 'embedding'"):
        DictationHeadConfig(kind="frames")
    with pytest.raises(ValueError, match="frames"):
        small_head()(torch.randn(2, 5, 15), torch.tensor([5, 5]))


def _utterances(n: int, gen: torch.Generator, words: torch.Tensor, no: torch.Tensor):
    """Toy dictations: noise frames with, per finding, a word (its vector) said, negated (a "no"
    vector a few frames before it) or not said; the mean of the frames barely tells them apart."""
    n_labels, dim = words.shape
    frames, mentions = [], []
    for _ in range(n):
        length = int(torch.randint(40, 80, (1,), generator=gen))
        x = torch.randn(length, dim, generator=gen) * 0.5
        m = torch.randint(-1, 2, (n_labels,), generator=gen)
        slots = torch.randperm(length // 10 - 1, generator=gen)[:n_labels] * 10 + 4
        for lab in range(n_labels):
            if m[lab] == -1:
                continue
            x[slots[lab] : slots[lab] + 3] += words[lab]
            if m[lab] == 0:
                x[slots[lab] - 3 : slots[lab] - 1] += no
        frames.append(x)
        mentions.append(torch.tensor([{1: 0, 0: 2, -1: 3}[int(v)] for v in m]))  # present / absent / not mentioned
    return frames, torch.stack(mentions)


def test_learns_negation_scope_that_a_pooled_embedding_blurs():
    gen = torch.Generator().manual_seed(0)
    words, no = torch.randn(3, 16, generator=gen) * 2, torch.randn(16, generator=gen) * 2
    train_x, train_y = _utterances(384, gen, words, no)
    test_x, test_y = _utterances(128, gen, words, no)
    head = small_head(stride=1, kernel=5)
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3)
    for _ in range(20):
        for i in range(0, len(train_x), 32):
            loss = dictation_loss(head(*pad_utterances(train_x[i : i + 32])), train_y[i : i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
    head.eval()
    with torch.no_grad():
        pred = head(*pad_utterances(test_x)).argmax(-1)
    accuracy = (pred == test_y).float().mean().item()
    assert accuracy > 0.9, accuracy


def test_shared_readout_is_one_map_for_every_finding_and_round_trips():
    shared = small_head(shared_readout=True).eval()
    assert tuple(shared.out_weight.shape) == (1, 16, shared.config.n_classes)
    frames, lengths = pad_utterances([torch.randn(20, 16)])
    # equal to the per-finding head whose read-outs are all copies of the shared one
    per = small_head().eval()
    per.load_state_dict({**shared.state_dict(), "out_weight": shared.out_weight.detach().expand(3, -1, -1).clone()})
    assert torch.allclose(shared(frames, lengths), per(frames, lengths), atol=1e-6)
    # a gradient from one finding's loss reaches the map every finding reads
    target = torch.tensor([[0, -100, -100]])
    dictation_loss(shared.train()(frames, lengths), target).backward()
    assert float(shared.out_weight.grad.abs().sum()) > 0
    again = head_config_from_dict(shared.config.to_dict())
    assert again.shared_readout is True
    assert head_config_from_dict({k: v for k, v in small_head().config.to_dict().items()
                                  if k != "shared_readout"}).shared_readout is False  # bundles before it
