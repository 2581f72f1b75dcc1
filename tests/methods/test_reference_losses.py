"""Reference tests: every method's loss and targets against the paper's algorithm written out
the slow, obvious way (Python loops over fixed small tensors), its stop-gradients, and its
EMA schedule. Companion of ``docs/methods/`` (issue 18, item 5).

Coverage map. For each method: S = slow reference loss, G = stop-gradient / gradient
routing, E = EMA schedule; "here" = a test in this file, other names are existing tests
(tests/losses/..., tests/methods/...); "lightly" = also compared with lightly 1.6 in
tests/losses/test_vs_lightly.py; "-" = not applicable (no such branch in the method).

simclr        S test_info_nce::test_nt_xent_matches_handwritten_simclr_loss; lightly;
                here: test_simclr_step_loss_is_nt_xent_over_the_2n_views_of_the_batch
              G -   E -
moco_v2       S test_moco::test_v2_loss_equals_hand_written_info_nce_with_the_queue,
                test_moco::test_v2_symmetric_loss_and_enqueue_of_both_views
              G test_moco::test_keys_of_the_step_are_enqueued_after_it_and_take_no_gradient
              E test_moco::test_key_network_moves_towards_the_query_network_by_one_minus_m;
                here: test_ema_update_follows_the_paper_schedule[moco_v2] (constant m)
moco_v3       S test_moco::test_v3_loss_equals_hand_written_symmetric_info_nce_scaled_by_two_t,
                test_moco::test_v3_forward_loss_matches_the_formula_on_its_own_views
              G test_moco::test_step_is_deterministic_and_trains_every_trainable_parameter
                (the key network gets no gradient)
              E test_moco (step 5 of 10); here: test_ema_update_follows_the_paper_schedule[moco_v3]
cpc           S test_cpc::test_loss_equals_a_hand_written_info_nce
              G - (every part is trained, as in the paper); causal context:
                test_cpc::test_context_at_a_row_never_sees_rows_below
              E -
dino          S test_dino::test_loss_equals_a_hand_written_cross_entropy_over_cross_view_pairs,
                test_dino::test_method_loss_uses_centred_sharpened_teacher_and_every_cross_view_pair;
                lightly
              G test_dino::test_teacher_gets_no_gradient_and_every_student_parameter_does;
                here: test_dino_teacher_distribution_is_a_constant_of_the_student_loss
              E test_dino::test_teacher_moves_towards_the_student_by_one_minus_momentum (step 0);
                here: test_ema_update_follows_the_paper_schedule[dino]; centre:
                test_dino::test_center_update_follows_the_formula
byol          S test_cosine::test_normalized_mse_by_hand_equals_two_minus_two_cos; lightly;
                here: test_byol_step_loss_is_the_symmetrised_normalised_mse_to_the_target
              G test_cosine::test_target_is_a_stop_gradient; test_siamese::
                test_step_is_deterministic_and_trains_every_trainable_parameter (target: none)
              E here: test_ema_update_follows_the_paper_schedule[byol]; test_momentum (EMA)
simsiam       S test_cosine::test_negative_cosine_by_hand; lightly;
                here: test_simsiam_step_loss_is_half_d_p1_z2_plus_half_d_p2_z1
              G test_cosine::test_target_is_a_stop_gradient;
                here: test_simsiam_gradients_are_those_of_the_stop_gradient_loss
              E -
barlow_twins  S test_redundancy::test_barlow_twins_by_hand; lightly; here:
                test_barlow_twins_step_loss_is_the_cross_correlation_loss_of_its_projections
              G -   E -
vicreg        S test_redundancy::test_vicreg_terms_and_weights_by_hand; lightly; here:
                test_vicreg_step_loss_is_invariance_variance_covariance_of_its_embeddings
              G -   E -
mae           S test_mae::test_loss_ignores_visible_patches; here (both targets):
                test_mae_step_loss_is_the_mse_of_masked_patches_and_visible_ones_get_no_gradient
              G here: the same test (no gradient reaches a visible patch's prediction)
              E -
rotation      S test_rotation::test_loss_is_cross_entropy_over_the_four_rotations
              G -   E -
jigsaw        S test_jigsaw::test_loss_is_cross_entropy_over_the_permutation_classes
              G -   E -
relative_location
              S test_relative_location::test_loss_is_eight_way_cross_entropy
              G -   E -
colorization  S test_colorization::test_losses_against_hand_written_values; here:
                test_colorization_ab_loss_is_the_soft_encoded_rebalanced_cross_entropy
              G -   E -
split_brain   S test_split_brain::test_loss_is_the_sum_of_both_directions_and_trains_everything;
                here: test_split_brain_l_loss_is_the_soft_encoded_cross_entropy_over_l_bins
              G here: test_split_brain_each_direction_trains_only_its_own_branch_and_decoder;
                inputs: test_split_brain::test_each_direction_sees_only_its_own_channels
              E -
inpainting    S test_inpainting::test_l2_loss_against_a_hand_computed_value
              G test_inpainting::test_each_gan_term_only_reaches_its_own_player
              E -
supervised    S here: test_supervised_step_loss_is_the_cross_entropy_of_its_logits
              G -   E -

Tolerance: 1e-5 relative (the references run in float64 Python, the library in float32).
"""

from __future__ import annotations

import math

import pytest
import torch

from selfsup.backbones import build_backbone
from selfsup.backbones.channel_split import build_channel_split
from selfsup.losses.dino import dino_teacher_probs
from selfsup.methods import get_method
from selfsup.methods.colorization import SoftBins, ab_bins, l_bins
from selfsup.methods.mae import masked_mse

MEAN, STD = (0.5,) * 3, (0.25,) * 3
REL = 1e-5

SMALL = {
    "simclr": {"proj_hidden_dim": 32, "proj_out_dim": 12, "temperature": 0.3},
    "byol": {"proj_hidden_dim": 32, "proj_out_dim": 12, "pred_hidden_dim": 32},
    "simsiam": {"proj_hidden_dim": 32, "proj_out_dim": 12, "pred_hidden_dim": 8, "proj_layers": 2},
    "barlow_twins": {"proj_hidden_dim": 32, "proj_out_dim": 12, "lambd": 0.05},
    "vicreg": {"proj_hidden_dim": 32, "proj_out_dim": 12},
    "moco_v2": {"proj_hidden_dim": 32, "proj_out_dim": 12, "queue_size": 16},
    "moco_v3": {"proj_hidden_dim": 32, "proj_out_dim": 12, "pred_hidden_dim": 32},
    "dino": {"out_dim": 32, "hidden_dim": 32, "bottleneck_dim": 8, "num_local_crops": 2},
}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _method(name: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    cls = get_method(name)
    cfg = cls.Config(**{**SMALL.get(name, {}), **overrides})
    kwargs = {"num_classes": 4} if name == "supervised" else {}
    return cls(build_backbone("resnet_tiny"), cfg, image_size=16, mean=MEAN, std=STD, **kwargs)


def _images(n: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g)


def _rows(t: torch.Tensor) -> list[list[float]]:
    """A 2-D tensor as nested Python floats (the references compute in float64 Python)."""
    return [[float(v) for v in row] for row in t.detach().double()]


def _two_views(m, images: torch.Tensor, seed: int) -> torch.Tensor:
    """The step's two views, drawn in the order ``forward`` draws them, concatenated."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([m.views(images, g, None, 0), m.views(images, g, None, 0)])


# --- slow references, written from the papers' definitions ---------------------------------
def _norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (_norm(a) * _norm(b))


def simclr_reference(z: list[list[float]], tau: float) -> float:
    """SimCLR, Algorithm 1 (Chen et al. 2020): views 2k and 2k+1 of image k; here the first
    view of image k is row k and its second view row k + N."""
    two_n = len(z)
    n = two_n // 2

    def ell(i: int, j: int) -> float:
        num = math.exp(_cos(z[i], z[j]) / tau)
        den = sum(math.exp(_cos(z[i], z[k]) / tau) for k in range(two_n) if k != i)
        return -math.log(num / den)

    return sum(ell(k, k + n) + ell(k + n, k) for k in range(n)) / two_n


def byol_reference(p: list[list[float]], t: list[list[float]]) -> float:
    """BYOL (Grill et al. 2020, eq. 2 and the symmetrised loss): for each direction the batch
    mean of ``|| p/|p| - t'/|t'| ||^2``, view 1 predicting view 2's target and vice versa;
    the two directions summed."""
    n = len(p) // 2
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)  # the other view of the same image
        pn, tn = _norm(p[i]), _norm(t[j])
        total += sum((a / pn - b / tn) ** 2 for a, b in zip(p[i], t[j], strict=True)) / n
    return total


def simsiam_reference(p: list[list[float]], z: list[list[float]]) -> float:
    """SimSiam (Chen & He 2021, Algorithm 1): ``L = D(p1, z2)/2 + D(p2, z1)/2`` with
    ``D(p, z) = -mean_i cos(p_i, z_i)``."""
    n = len(p) // 2
    d12 = -sum(_cos(p[i], z[i + n]) for i in range(n)) / n
    d21 = -sum(_cos(p[i + n], z[i]) for i in range(n)) / n
    return d12 / 2 + d21 / 2


def barlow_twins_reference(z1: list[list[float]], z2: list[list[float]], lambd: float) -> float:
    """Barlow Twins (Zbontar et al. 2021, eqs. 1-2 and Algorithm 1): each dimension
    normalised along the batch (mean 0, std 1 as BatchNorm without affine: biased variance,
    eps 1e-5), ``C_ij = sum_b z1_bi z2_bj / N``, loss ``sum_i (1 - C_ii)^2 +
    lambda sum_{i != j} C_ij^2``."""
    n, d = len(z1), len(z1[0])

    def standardised(z: list[list[float]]) -> list[list[float]]:
        cols = []
        for j in range(d):
            col = [z[b][j] for b in range(n)]
            mean = sum(col) / n
            var = sum((v - mean) ** 2 for v in col) / n
            cols.append([(v - mean) / math.sqrt(var + 1e-5) for v in col])
        return cols  # cols[j][b]

    a, b = standardised(z1), standardised(z2)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[i][k] * b[j][k] for k in range(n)) / n
            loss += (1 - c) ** 2 if i == j else lambd * c * c
    return loss


def vicreg_reference(z1: list[list[float]], z2: list[list[float]]) -> float:
    """VICReg (Bardes et al. 2022, eqs. 1-6 and Algorithm 1): ``lambda s + mu (v(Z) +
    v(Z'))/2 + nu (c(Z) + c(Z'))`` with invariance ``s = mean (z - z')^2``, variance ``v =
    mean_j relu(1 - sqrt(Var(z_j) + 1e-4))`` (unbiased variance), covariance ``c = sum_{i !=
    j} Cov(z)_ij^2 / d``; lambda = mu = 25, nu = 1."""
    n, d = len(z1), len(z1[0])
    inv = sum((z1[b][j] - z2[b][j]) ** 2 for b in range(n) for j in range(d)) / (n * d)
    var = cov = 0.0
    for z in (z1, z2):
        means = [sum(z[b][j] for b in range(n)) / n for j in range(d)]
        for j in range(d):
            v = sum((z[b][j] - means[j]) ** 2 for b in range(n)) / (n - 1)
            var += max(0.0, 1 - math.sqrt(v + 1e-4)) / d / 2
        for i in range(d):
            for j in range(d):
                if i != j:
                    c = sum((z[b][i] - means[i]) * (z[b][j] - means[j]) for b in range(n))
                    cov += (c / (n - 1)) ** 2 / d
    return 25 * inv + 25 * var + 1 * cov


# --- S: the step's loss equals the paper's, on the step's own tensors ----------------------
def test_simclr_step_loss_is_nt_xent_over_the_2n_views_of_the_batch():
    m = _method("simclr")
    images = _images()
    loss, _ = m(images, None, torch.Generator().manual_seed(3))
    with torch.no_grad():
        z = m.projector(m.encoder(_two_views(m, images, 3)))
    assert loss.item() == pytest.approx(simclr_reference(_rows(z), 0.3), rel=REL)


def test_byol_step_loss_is_the_symmetrised_normalised_mse_to_the_target():
    m = _method("byol")
    with torch.no_grad():  # a target that differs from the online network
        for p in m.target.parameters():
            p.add_(0.05 * torch.randn_like(p))
    images = _images()
    loss, _ = m(images, None, torch.Generator().manual_seed(4))
    x = _two_views(m, images, 4)
    with torch.no_grad():
        p = m.predictor(m.projector(m.encoder(x)))
        t = m.target["projector"](m.target["encoder"](x))
    assert loss.item() == pytest.approx(byol_reference(_rows(p), _rows(t)), rel=REL)


def test_simsiam_step_loss_is_half_d_p1_z2_plus_half_d_p2_z1():
    m = _method("simsiam")
    images = _images()
    loss, _ = m(images, None, torch.Generator().manual_seed(5))
    with torch.no_grad():
        z = m.projector(m.encoder(_two_views(m, images, 5)))
        p = m.predictor(z)
    assert loss.item() == pytest.approx(simsiam_reference(_rows(p), _rows(z)), rel=REL)


def test_barlow_twins_step_loss_is_the_cross_correlation_loss_of_its_projections():
    m = _method("barlow_twins")
    images = _images(8)
    loss, metrics = m(images, None, torch.Generator().manual_seed(6))
    with torch.no_grad():
        z = _rows(m.projector(m.encoder(_two_views(m, images, 6))))
    expected = barlow_twins_reference(z[:8], z[8:], 0.05)
    assert loss.item() == pytest.approx(expected, rel=REL)


def test_vicreg_step_loss_is_invariance_variance_covariance_of_its_embeddings():
    m = _method("vicreg")
    images = _images(8)
    loss, _ = m(images, None, torch.Generator().manual_seed(7))
    with torch.no_grad():
        z = _rows(m.projector(m.encoder(_two_views(m, images, 7))))
    assert loss.item() == pytest.approx(vicreg_reference(z[:8], z[8:]), rel=REL)


def test_supervised_step_loss_is_the_cross_entropy_of_its_logits():
    m = _method("supervised")
    images, labels = _images(), torch.tensor([0, 1, 2, 3, 0, 1])
    loss, _ = m(images, labels, torch.Generator().manual_seed(8))
    g = torch.Generator().manual_seed(8)
    with torch.no_grad():
        logits = _rows(m.classifier(m.encoder(m.views(images, g, None, 0))))
    expected = sum(
        -(row[y] - math.log(sum(math.exp(v) for v in row)))
        for row, y in zip(logits, labels.tolist(), strict=True)
    ) / len(logits)
    assert loss.item() == pytest.approx(expected, rel=REL)


def _patches(x: torch.Tensor, p: int) -> list[list[list[float]]]:
    """MAE's patchify with loops: (N, C, H, W) -> [image][patch][p*p*C values], patches
    row-major, values ordered (row in patch, column in patch, channel)."""
    n, c, h, w = x.shape
    out = []
    for b in range(n):
        patches = []
        for gi in range(h // p):
            for gj in range(w // p):
                patches.append(
                    [
                        float(x[b, ch, gi * p + r, gj * p + s])
                        for r in range(p)
                        for s in range(p)
                        for ch in range(c)
                    ]
                )
        out.append(patches)
    return out


def mae_reference(pred, target, mask, norm_pix: bool) -> float:
    """MAE (He et al. 2022, sec. 3 "Reconstruction target"): the mean squared error per
    patch, averaged over the masked patches only; with the normalised-pixel target each
    target patch is standardised by its own mean and (unbiased) variance + 1e-6 first."""
    total, count = 0.0, 0
    for b, patches in enumerate(target):
        for k, t in enumerate(patches):
            if mask[b][k] == 0:
                continue
            if norm_pix:
                mean = sum(t) / len(t)
                var = sum((v - mean) ** 2 for v in t) / (len(t) - 1)
                t = [(v - mean) / math.sqrt(var + 1e-6) for v in t]
            total += sum((a - v) ** 2 for a, v in zip(pred[b][k], t, strict=True)) / len(t)
            count += 1
    return total / count


@pytest.mark.parametrize("norm_pix", [True, False])
def test_mae_step_loss_is_the_mse_of_masked_patches_and_visible_ones_get_no_gradient(norm_pix):
    torch.manual_seed(0)
    cls = get_method("mae")
    enc = build_backbone("vit_micro", image_size=16, patch_size=4)
    cfg = cls.Config(decoder_dim=32, decoder_heads=2, decoder_depth=1, norm_pix_loss=norm_pix)
    m = cls(enc, cfg, image_size=16, mean=MEAN, std=STD)
    kept = {}

    def keep(module, inputs, output):
        output.retain_grad()
        kept["pred"] = output

    m.decoder_pred.register_forward_hook(keep)
    images = _images(4)
    loss, _ = m(images, None, torch.Generator().manual_seed(9))
    loss.backward()
    g = torch.Generator().manual_seed(9)
    x = m.views(images, g, None, 0)
    _, mask, _ = m.sample_masks(4, g, x.device)
    pred = kept["pred"][:, 1:]  # drop the cls position
    assert int(mask.sum()) == 4 * 12  # 75% of 16 patches per image
    expected = mae_reference(
        [_rows(pi) for pi in pred], _patches(x.detach(), 4), mask.tolist(), norm_pix
    )
    assert loss.item() == pytest.approx(expected, rel=REL)
    # the loss sees masked patches only: zero gradient on every visible patch's prediction
    grad = kept["pred"].grad[:, 1:]
    assert torch.all(grad[mask == 0] == 0)
    assert torch.all(grad[mask == 1].abs().sum(-1) > 0)
    # and the library function agrees with the loop on the same tensors
    target = m.encoder.patchify(x.detach()).float()
    torch.testing.assert_close(
        masked_mse(pred.detach(), target, mask, norm_pix), loss.detach(), rtol=1e-6, atol=0
    )


def soft_bins_reference(
    logits: torch.Tensor,
    values: torch.Tensor,
    centres: torch.Tensor,
    k: int,
    sigma: float,
    prior: list[float] | None,
    mix: float = 0.5,
) -> float:
    """Zhang et al. 2016, eqs. 2-4: per pixel the ``k`` nearest bin centres of the true value,
    weighted by a Gaussian of width ``sigma`` and normalised (the soft target Z); the
    cross-entropy ``-sum_q Z_q log softmax(logits)_q``; with a prior, times ``v = w[q*]``
    (q* the nearest bin), ``w ∝ ((1 - mix) p + mix / Q)^-1`` scaled so that ``sum_q p_q
    w_q = 1``; averaged over pixels."""
    q = len(centres)
    c = [[float(v) for v in row] for row in centres]
    weights = None
    if prior is not None:
        total = sum(prior)
        p = [v / total for v in prior]
        raw = [1.0 / ((1 - mix) * pq + mix / q) for pq in p]
        scale = sum(pq * wq for pq, wq in zip(p, raw, strict=True))
        weights = [wq / scale for wq in raw]
    n, dims, h, w = values.shape
    loss, pixels = 0.0, 0
    for b in range(n):
        for i in range(h):
            for j in range(w):
                v = [float(values[b, d, i, j]) for d in range(dims)]
                dist2 = sorted(
                    (sum((v[d] - c[r][d]) ** 2 for d in range(dims)), r) for r in range(q)
                )[:k]
                kernel = [math.exp(-d2 / (2 * sigma**2)) for d2, _ in dist2]
                z = [kv / sum(kernel) for kv in kernel]
                row = [float(logits[b, r, i, j]) for r in range(q)]
                log_norm = math.log(sum(math.exp(t) for t in row))
                ce = -sum(zq * (row[r] - log_norm) for zq, (_, r) in zip(z, dist2, strict=True))
                if weights is not None:
                    ce *= weights[dist2[0][1]]
                loss += ce
                pixels += 1
    return loss / pixels


def test_colorization_ab_loss_is_the_soft_encoded_rebalanced_cross_entropy():
    centres = ab_bins()
    bins = SoftBins(centres, neighbors=5, sigma=5.0, rebalance=True, mix=0.5, grid=10.0)
    g = torch.Generator().manual_seed(10)
    prior = torch.rand(len(centres), generator=g, dtype=torch.float64) ** 4  # uneven
    bins.prior_mass.copy_(prior)
    ab = (torch.rand(2, 2, 3, 3, generator=g) - 0.5) * 120  # in-gamut-ish ab values
    logits = torch.randn(2, len(centres), 3, 3, generator=g)
    loss, _ = bins.loss(logits, ab, update_prior=False)
    expected = soft_bins_reference(logits, ab, centres, 5, 5.0, prior.tolist())
    assert loss.item() == pytest.approx(expected, rel=REL)
    # without rebalancing: the plain soft cross-entropy
    plain = SoftBins(centres, neighbors=5, sigma=5.0, grid=10.0)
    loss, _ = plain.loss(logits, ab, update_prior=False)
    assert loss.item() == pytest.approx(
        soft_bins_reference(logits, ab, centres, 5, 5.0, None), rel=REL
    )


def test_split_brain_l_loss_is_the_soft_encoded_cross_entropy_over_l_bins():
    centres = l_bins(50)
    bins = SoftBins(centres, neighbors=5, sigma=1.0)
    g = torch.Generator().manual_seed(11)
    light = torch.rand(2, 1, 3, 3, generator=g) * 100
    logits = torch.randn(2, 50, 3, 3, generator=g)
    loss, _ = bins.loss(logits, light, update_prior=False)
    expected = soft_bins_reference(logits, light, centres, 5, 1.0, None)
    assert loss.item() == pytest.approx(expected, rel=REL)


# --- G: stop-gradients and gradient routing ------------------------------------------------
def _grads(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]


def test_simsiam_gradients_are_those_of_the_stop_gradient_loss():
    """The step's gradients equal those of ``D(p1, sg(z2))/2 + D(p2, sg(z1))/2`` computed
    here, and differ from the loss without the stop-gradient (so the test can tell)."""
    m = _method("simsiam")
    images = _images(8)
    params = [p for p in m.parameters() if p.requires_grad]
    loss, _ = m(images, None, torch.Generator().manual_seed(12))
    got = _grads(loss, params)
    z = m.projector(m.encoder(_two_views(m, images, 12)))
    p = m.predictor(z)
    n = len(images)

    def d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return -torch.nn.functional.cosine_similarity(a, b, dim=1).mean()

    with_sg = 0.5 * d(p[:n], z[n:].detach()) + 0.5 * d(p[n:], z[:n].detach())
    without_sg = 0.5 * d(p[:n], z[n:]) + 0.5 * d(p[n:], z[:n])
    assert with_sg.item() == pytest.approx(loss.item(), rel=REL)
    for a, b in zip(got, _grads(with_sg, params), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    differs = [
        not torch.allclose(a, b, rtol=1e-3, atol=1e-5)
        for a, b in zip(got, _grads(without_sg, params), strict=True)
    ]
    assert any(differs)


def test_dino_teacher_distribution_is_a_constant_of_the_student_loss():
    logits = torch.randn(4, 16, requires_grad=True)
    probs = dino_teacher_probs(logits, torch.zeros(1, 16), 0.04)
    assert not probs.requires_grad and probs.grad_fn is None


def test_split_brain_each_direction_trains_only_its_own_branch_and_decoder():
    """Split-brain's two sub-networks are disjoint: the L -> ab loss reaches branch 0 (L) and
    the ab decoder only, the ab -> L loss branch 1 (ab) and the L decoder only."""
    torch.manual_seed(0)
    cls = get_method("split_brain")
    m = cls(
        build_channel_split("resnet_tiny", (1, 2)),
        cls.Config(decoder_dim=32),
        image_size=16,
        mean=MEAN,
        std=STD,
    )
    g = torch.Generator().manual_seed(13)
    lab = m.train_lab(_images(4), g, None, 0)
    out_ab, out_l = m.predict(lab)
    loss_ab, _ = m.ab_bins.loss(out_ab, m.pool(lab[:, 1:]), update_prior=False)
    loss_l, _ = m.l_bins.loss(out_l, m.pool(lab[:, :1]), update_prior=False)
    groups = {
        "l_side": (m.encoder.branches[0], m.ab_decoder),
        "ab_side": (m.encoder.branches[1], m.l_decoder),
    }
    for loss, own, other in ((loss_ab, "l_side", "ab_side"), (loss_l, "ab_side", "l_side")):
        branch, decoder = groups[other]
        others = list(branch.parameters()) + list(decoder.parameters())
        assert all(float(gr.abs().sum()) == 0.0 for gr in _grads(loss, others)), own
        # its own side: the branch's first convolution and every decoder parameter learn (the
        # residual blocks' inner convolutions start at zero gradient: zero-initialised BN)
        branch, decoder = groups[own]
        first = next(iter(branch.parameters()))
        mine = [first, *decoder.parameters()]
        assert all(float(gr.abs().sum()) > 0 for gr in _grads(loss, mine)), own


# --- E: EMA schedules ------------------------------------------------------------------------
def _paper_momentum(name: str, base: float, k: int, total: int) -> float:
    """BYOL (Grill et al. 2020, sec. 3.2): ``tau = 1 - (1 - tau_base)(cos(pi k / K) + 1)/2``;
    MoCo v3 and DINO use the same cosine rise to 1; MoCo v2 keeps ``m`` constant."""
    if name == "moco_v2":
        return base
    return 1 - (1 - base) * (math.cos(math.pi * k / total) + 1) / 2


EMA_OF = {  # method -> (EMA attribute, online modules, base momentum of the paper)
    "byol": ("target", ("encoder", "projector"), 0.996),
    "moco_v2": ("key", ("encoder", "projector"), 0.999),
    "moco_v3": ("key", ("encoder", "projector"), 0.99),
    "dino": ("teacher", ("encoder", "head"), 0.996),
}


@pytest.mark.parametrize("name", sorted(EMA_OF))
@pytest.mark.parametrize("k", [0, 3, 9, 10])
def test_ema_update_follows_the_paper_schedule(name, k):
    attr, online_names, base = EMA_OF[name]
    m = _method(name, base_momentum=base)
    loss, _ = m(_images(8), None, torch.Generator().manual_seed(14))
    loss.backward()
    torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5).step()
    ema = getattr(m, attr)
    before = {
        f"{group}.{key}": p.detach().clone()
        for group in online_names
        for key, p in ema[group].named_parameters()
    }
    online = {
        f"{group}.{key}": p.detach().clone()
        for group in online_names
        for key, p in getattr(m, group).named_parameters()
    }
    assert set(before) == set(online)
    m.on_after_step(k, 10)
    expected_m = _paper_momentum(name, base, k, 10)
    assert float(ema.momentum) == pytest.approx(expected_m, abs=1e-7)
    moved = 0
    for group in online_names:
        for key, p in ema[group].named_parameters():
            full = f"{group}.{key}"
            want = expected_m * before[full] + (1 - expected_m) * online[full]
            torch.testing.assert_close(p, want, rtol=1e-6, atol=1e-7)
            moved += not torch.equal(p, before[full])
    # the target moves while m < 1 and stands still at the end of the cosine schedule
    assert (moved > 0) == (expected_m < 1)
