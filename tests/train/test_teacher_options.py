"""Teacher options beyond CT-CLIP's defaults: unnormalised tubelets, the auxiliary label loss,
a sharper initial logit scale (all off unless a config asks for them)."""

import copy
import math

import numpy as np
import pytest
import torch

from engine.models.ct_layers import TubeletEmbedding
from train.distributed import DistEnv
from train.recipes import TeacherRecipe, build_teacher, load_run_config

from .training_fixtures import SMOKE_CONFIG, make_tiny_data


def test_patch_norm_off_keeps_density():
    torch.manual_seed(0)
    fluid, lung = torch.full((1, 1, 4, 8, 8), 0.02), torch.full((1, 1, 4, 8, 8), -0.85)
    with_norm = TubeletEmbedding(1, 8, 4, 16)
    without = TubeletEmbedding(1, 8, 4, 16, patch_norm=False)
    # CT-CLIP's per-tubelet LayerNorm maps every uniform tubelet to the same token
    assert torch.allclose(with_norm(fluid), with_norm(lung), atol=1e-5)
    assert not torch.allclose(without(fluid), without(lung), atol=1e-3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    return make_tiny_data(tmp_path_factory.mktemp("teacher-options") / "data", n_train=8, n_valid=4)


def test_aux_label_loss_adds_bce_to_info_nce(tiny):
    cfg = copy.deepcopy(load_run_config(SMOKE_CONFIG))
    cfg["teacher"]["aux_label_weight"] = 0.5
    cfg["logit_scale_init"] = 10.0
    recipe = TeacherRecipe(cfg, tiny, env=DistEnv(), progress=False)
    assert recipe.module.label_head is not None
    assert math.isclose(recipe.module.logit_scale.value, 10.0, rel_tol=1e-5)
    assert {id(p) for p in recipe.module.label_head.parameters()} <= recipe.head_parameters()
    loss, parts = recipe.loss(list(range(4)), 0, DistEnv())
    assert float(loss.detach()) == pytest.approx(parts["info_nce"] + 0.5 * parts["label_bce"], rel=1e-5)
    loss.backward()
    assert recipe.module.label_head.weight.grad is not None and recipe.module.ct.pool.proj.weight.grad.abs().sum() > 0


def test_defaults_stay_ctclip():
    cfg = load_run_config(SMOKE_CONFIG)
    model, _ = build_teacher(cfg, pretrained_text=False)
    assert model.label_head is None and math.isclose(model.logit_scale.value, math.e, rel_tol=1e-6)
    assert isinstance(model.ct.patch_embed.norm_in, torch.nn.LayerNorm)


def test_density_path_standardisation_is_fitted_on_training_volumes(tiny):
    cfg = copy.deepcopy(load_run_config(SMOKE_CONFIG))
    cfg["ct_encoder"].update(density_path=True, density_pool=[4, 8, 8], density_thresholds=[-0.5, 0.3],
                             density_rank=4)
    recipe = TeacherRecipe(cfg, tiny, env=DistEnv(), progress=False)
    density = recipe.module.ct.density
    assert density is not None and torch.any(density.std > density.STD_FLOOR)
    feats = density.features(_batch(recipe, recipe.train_keys))
    assert torch.allclose(feats.mean(0), density.mean, atol=1e-4)  # fitted on the training volumes
    loss, _ = recipe.loss(list(range(4)), 0, DistEnv())
    loss.backward()
    assert density.down.weight.grad.abs().sum() > 0
    assert {"ct.density.mean", "ct.density.std"} <= set(recipe.module.state_dict())  # saved with the weights


def _batch(recipe, keys):
    from train.recipes import _ct_batch

    return _ct_batch(keys, recipe.cache, recipe.env.device)


def test_text_label_loss_reads_the_report_with_the_same_head(tiny):
    cfg = copy.deepcopy(load_run_config(SMOKE_CONFIG))
    cfg["teacher"].update(aux_label_weight=1.0, text_label_weight=0.5)
    recipe = TeacherRecipe(cfg, tiny, env=DistEnv(), progress=False)
    loss, parts = recipe.loss(list(range(4)), 0, DistEnv())
    assert float(loss.detach()) == pytest.approx(parts["info_nce"] + parts["label_bce"]
                                                 + 0.5 * parts["text_label_bce"], rel=1e-5)
    loss.backward()
    assert recipe.module.text_projection.weight.grad.abs().sum() > 0
    assert 0.0 < recipe.validate(DistEnv())["prompt_direction_cos"] <= 1.0


def test_prompt_direction_cosine():
    from train.recipes import prompt_direction_cosine

    shared = torch.tensor([1.0, 0.0, 0.0])
    parallel = torch.stack([v for j in range(18) for v in (torch.eye(3)[1] + 0.01 * j + shared, torch.eye(3)[1])])
    assert prompt_direction_cosine(parallel) > 0.99
    ortho = torch.randn(36, 64)
    assert abs(prompt_direction_cosine(ortho)) < 0.2


def test_tuned_text_layer_trains_from_cached_states_and_is_saved_with_the_teacher(tiny, tmp_path):
    """``text_tower.tuned_layers``: the teacher tunes MiniLM's top layer on cached lower states at
    ``text_lr_mult``; the checkpoint carries it, and the loaded teacher's tower gives the same
    report embeddings the recipe trained on (so students distil to what the teacher learned)."""
    from train.recipes import load_teacher, teacher_text_embeddings

    cfg = copy.deepcopy(load_run_config(SMOKE_CONFIG))
    cfg["text_tower"] = {**cfg["text_tower"], "tuned_layers": 1}
    cfg["teacher"].update(aux_label_weight=1.0, text_label_weight=1.0, text_lr_mult=0.25)
    recipe = TeacherRecipe(cfg, tiny, env=DistEnv(), progress=False)
    top = recipe.module.text_top
    assert top is not None and top[0] is recipe.text.backbone.encoder.layer[-1]
    assert set(recipe.lr_multipliers().values()) == {0.25}
    assert recipe.train_text.dtype == object and recipe.train_text[0].ndim == 2  # cached token states
    loss, _ = recipe.loss(list(range(4)), 0, DistEnv())
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in top.parameters())
    assert all(p.grad is None for p in recipe.text.backbone.encoder.layer[-2].parameters())
    with torch.no_grad():
        top[0].output.dense.weight.add_(0.05)  # as if trained
        trained = recipe.text_embed(recipe.valid_text).float()
    recipe.save_final(tmp_path, {})
    teacher = load_teacher(tmp_path)
    again = teacher_text_embeddings(teacher, [s.findings for s in recipe.valid], recipe.cache)
    assert torch.allclose(torch.from_numpy(again), trained, atol=1e-4)


def test_init_from_a_finished_teacher_starts_from_its_weights_and_refuses_another_config(tiny, tmp_path):
    from engine.errors import DataError

    cfg = copy.deepcopy(load_run_config(SMOKE_CONFIG))
    first = TeacherRecipe(cfg, tiny, env=DistEnv(), progress=False)
    with torch.no_grad():
        first.module.ct.pool.proj.weight.add_(0.5)  # as if trained
    (tmp_path / "t").mkdir()
    (tmp_path / "u").mkdir()
    first.save_final(tmp_path / "t", {})
    again = TeacherRecipe(cfg, tiny, env=DistEnv(), progress=False)
    assert not torch.equal(again.module.ct.pool.proj.weight, first.module.ct.pool.proj.weight)
    again.init_from(tmp_path / "t")
    assert all(torch.equal(v, first.module.state_dict()[k]) for k, v in again.module.state_dict().items())
    again.save_final(tmp_path / "u", {})
    import json

    assert json.loads((tmp_path / "u" / "model.json").read_text())["initialised_from"]["folder"] == str(tmp_path / "t")
    other = copy.deepcopy(cfg)
    other["teacher"]["aux_label_weight"] = 1.0  # a label head the stored weights lack
    with pytest.raises(DataError, match="do not fit"):
        TeacherRecipe(other, tiny, env=DistEnv(), progress=False).init_from(tmp_path / "t")


def test_prior_bias_init_starts_the_label_head_at_the_training_prevalence(tiny):
    cfg = copy.deepcopy(load_run_config(SMOKE_CONFIG))
    cfg["teacher"]["aux_label_weight"] = 1.0
    off = TeacherRecipe(cfg, tiny, env=DistEnv(), progress=False)
    cfg["teacher"]["prior_bias_init"] = True
    on = TeacherRecipe(cfg, tiny, env=DistEnv(), progress=False)
    prevalence = np.clip(np.stack([s.labels for s in on.train]).mean(0), 1e-4, 1 - 1e-4)
    assert torch.allclose(torch.sigmoid(on.module.label_head.bias), torch.from_numpy(prevalence).float(), atol=1e-5)
    assert not torch.allclose(off.module.label_head.bias, on.module.label_head.bias)
    # with the encoder's output held at 0, the label loss is then the prevalences' cross-entropy (their
    # entropy, but for the clip that keeps a finding no training study has at 1e-4)
    zero = on.module.label_head(torch.zeros(len(on.train), on.module.label_head.in_features))
    target = torch.from_numpy(np.stack([s.labels for s in on.train])).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(zero, target)
    rate = target.numpy().mean(0)
    entropy = -(rate * np.log(prevalence) + (1 - rate) * np.log(1 - prevalence)).mean()
    assert float(bce) == pytest.approx(entropy, rel=1e-3)


def test_info_nce_weight_zero_trains_the_label_read_outs_alone(tiny):
    cfg = copy.deepcopy(load_run_config(SMOKE_CONFIG))
    cfg["teacher"].update(aux_label_weight=1.0, info_nce_weight=0.0)
    recipe = TeacherRecipe(cfg, tiny, env=DistEnv(), progress=False)
    loss, parts = recipe.loss(list(range(4)), 0, DistEnv())
    assert parts["info_nce"] > 0  # still measured
    assert float(loss.detach()) == pytest.approx(parts["label_bce"], rel=1e-5)
    loss.backward()
    assert recipe.module.logit_scale.log_scale.grad is None or float(recipe.module.logit_scale.log_scale.grad) == 0


def test_prompt_label_loss_is_the_cross_entropy_of_the_products_zero_shot_read_out(tiny):
    from engine.findings import zero_shot_probabilities

    cfg = copy.deepcopy(load_run_config(SMOKE_CONFIG))
    cfg["teacher"].update(info_nce_weight=0.0, prompt_label_weight=2.0)
    recipe = TeacherRecipe(cfg, tiny, env=DistEnv(), progress=False)
    rows = list(range(4))
    loss, parts = recipe.loss(rows, 0, DistEnv())
    assert float(loss.detach()) == pytest.approx(2.0 * parts["prompt_bce"], rel=1e-5)
    # the same number from the engine's zero-shot probabilities, shifted by the training prevalence
    with torch.no_grad():
        ct, _ = recipe._embed([recipe.train_keys[i] for i in rows], recipe.train_text[rows])
        prompts = recipe.text_embed(recipe.prompt_feats).float()
        p = zero_shot_probabilities(ct.float(), prompts[0::2], prompts[1::2], recipe.module.logit_scale.value)
    labels = np.stack([recipe.train[i].labels for i in rows]).astype(np.float64)
    rate = np.clip(np.stack([s.labels for s in recipe.train]).mean(0), 1e-4, 1 - 1e-4)
    logit = np.log(p.double().numpy() / (1 - p.double().numpy())) + np.log(rate / (1 - rate))
    expected = np.mean(np.logaddexp(0, logit) - labels * logit)
    assert parts["prompt_bce"] == pytest.approx(expected, rel=1e-4)
    # both towers learn from it: the CT encoder and the text projection get gradients
    loss.backward()
    assert any(q.grad is not None and float(q.grad.abs().sum()) > 0 for q in recipe.module.ct.parameters())
    assert any(q.grad is not None and float(q.grad.abs().sum()) > 0 for q in recipe.module.text_projection.parameters())
