"""Video colorization by attention copying (Vondrick et al. 2018, "Tracking Emerges by
Colorizing Videos").

From each clip a few frames are taken: ``reference_frames`` (3, the paper's) reference frames
followed by one target frame (consecutive, or ``max_frame_gap`` apart). All are converted to CIE
Lab; the shared encoder sees only the grey L channel of each (input space ``lab_l``, as in
:mod:`~selfsup.methods.colorization`), and a small convolutional head turns its multi-scale
feature map (:func:`~selfsup.heads.dense.pyramid_features`, stride ``feature_stride``) into
``embedding_dim`` (64)-dimensional embeddings per location. For every target location ``j`` the
attention over all reference locations ``i``, ``A_ji = softmax_i(f_i . f_j / T)``, copies the
reference colours. Colours are quantised: k-means (16 clusters, the paper's) over the ab values
at feature resolution, fitted once on the first training batch (gathered over processes) and
kept in the ``codebook`` buffer, so checkpoints and resumed runs keep it. The loss is the
cross-entropy of the copied colour distribution against the target's quantised colours
(:func:`~selfsup.losses.colour_copy_loss`; target locations whose colour no reference location
has are left out and counted as ``uncopyable``).

Augmentation is the same random resized crop and flip for every frame of a clip, so the only
change between frames is the clip's own motion.

Training data: clips (``data_layout = "clip"``), e.g. ``data.source=synthetic_video`` or
``video:PATH``. The exported encoder is the grey-input backbone; kNN and the linear probe see
RGB images through their L channel (``encoder.json`` input space ``lab_l``).
:func:`selfsup.evaluate.propagation` uses :meth:`VideoColorization.embed` to propagate masks.

Pretext metrics on held-out clips (first ``reference_frames + 1`` frames, no augmentation):
``loss``, ``copy_accuracy`` (the copied colour distribution's arg-max is the target's cluster),
``uncopyable``, and the colourisation of the target frame by copying the references' ab values
(continuous, not quantised): ``ab_l2_error`` and ``psnr``, beside ``static_*`` (the last
reference frame's colour at the same pixel: no tracking) and ``grey_*`` (no colour).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from selfsup.augment import Compose, RandomHorizontalFlip, RandomResizedCrop, Resize, ToFloat
from selfsup.augment.color import lab_to_input, lab_to_rgb, rgb_to_lab
from selfsup.backbones import Backbone
from selfsup.data.video import split_frames
from selfsup.errors import ConfigError
from selfsup.heads import DenseEmbedding, pyramid_channels, pyramid_features
from selfsup.losses import colour_copy_loss_from_logits, copy_attention, copy_logits, copy_values
from selfsup.methods.base import Method, MethodConfig, StepResult
from selfsup.methods.colorization import LabMethod, colorization_errors, no_autocast
from selfsup.utils.distributed import gather_no_grad

__all__ = ["VideoColorization", "VideoColorizationConfig", "kmeans", "quantize"]


class VideoColorizationConfig(MethodConfig):
    reference_frames: int = Field(default=3, ge=1)
    """Reference frames before the target (Vondrick et al.: 3)."""
    clusters: int = Field(default=16, ge=2)
    """k-means colour clusters over ab (Vondrick et al.: 16)."""
    temperature: float = Field(default=1.0, gt=0)
    """Softmax temperature of the training attention (the paper trains at 1)."""
    copy_temperature: float = Field(default=0.5, gt=0)
    """Temperature of the copies in pictures and pretext metrics (and the default of
    ``selfsup colorize``): sharper than training, as the paper does at test time."""
    embedding_dim: int = Field(default=64, gt=0)
    """Channels of the per-location embedding (Vondrick et al.: 64)."""
    hidden_dim: int = Field(default=128, gt=0)
    """Width of the embedding head."""
    feature_stride: int = Field(default=4, ge=1)
    """Stride of the embedding map (Vondrick et al.: 8 on 256 px frames)."""
    max_frame_gap: int = Field(default=1, ge=1)
    """The sampled frames are ``g`` frames apart, g uniform in 1 .. max_frame_gap (limited by
    the clip length)."""
    crop_scale: tuple[float, float] = (0.6, 1.0)
    """Area range of the random resized crop (the same crop for every frame of a clip)."""
    flip: bool = True
    kmeans_samples: int = Field(default=20000, gt=0)
    """ab values (per process) the codebook is fitted on."""
    kmeans_iterations: int = Field(default=25, ge=1)


# ----------------------------------------------------------------------------- colours
@torch.no_grad()
def kmeans(points: Tensor, k: int, iterations: int, generator: torch.Generator) -> Tensor:
    """k-means (k-means++ seeding, then Lloyd iterations) of points (P, D): centres (k, D),
    sorted by their first coordinate then the second (a canonical order). Deterministic for a
    generator (CPU); an empty cluster keeps its centre."""
    pts = points.float().cpu()
    if len(pts) < k:
        raise ValueError(f"k-means needs at least k={k} points, got {len(pts)}")
    first = int(torch.randint(0, len(pts), (1,), generator=generator))
    centres = [pts[first]]
    d2 = (pts - pts[first]).pow(2).sum(1)
    for _ in range(1, k):
        weights = d2 if float(d2.sum()) > 0 else torch.ones_like(d2)
        idx = int(torch.multinomial(weights, 1, generator=generator))
        centres.append(pts[idx])
        d2 = torch.minimum(d2, (pts - pts[idx]).pow(2).sum(1))
    c = torch.stack(centres)
    for _ in range(iterations):
        assign = torch.cdist(pts, c).argmin(1)
        counts = torch.bincount(assign, minlength=k).float()
        sums = torch.zeros_like(c).index_add_(0, assign, pts)
        c = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], c)
    order = sorted(range(k), key=lambda i: tuple(c[i].tolist()))
    return c[order]


def quantize(ab: Tensor, centres: Tensor) -> Tensor:
    """Nearest-centre labels (N, h, w) long of ab values (N, 2, h, w)."""
    n, _, h, w = ab.shape
    flat = ab.float().permute(0, 2, 3, 1).reshape(-1, 2)
    return torch.cdist(flat, centres.to(flat)).argmin(1).view(n, h, w)


class VideoColorization(Method):
    """Grey reference and target frames -> embeddings; the target's colours are copied from the
    references by attention. ``encoder`` must take 1 input channel (the L channel)."""

    name = "video_colorization"
    family = "cross-modal"
    description = (
        "colourise a grey target frame by attention over grey reference frames that copies "
        "their quantised colours (Vondrick et al. 2018); tracking emerges"
    )
    Config = VideoColorizationConfig
    input_space = "lab_l"
    data_layout = "clip"
    keep_eager_on_cpu = "its compiled fp32 training runs measured 1.02-1.04x its eager ones"
    default_augment = "eval"

    cfg: VideoColorizationConfig
    codebook: Tensor
    codebook_ready: Tensor

    @classmethod
    def encoder_channels(cls, data_channels: int) -> int:
        if data_channels % 3 or data_channels < 6:
            raise ConfigError(
                f"{cls.name} trains on RGB clips of 2 or more frames (3 x frames channels), got "
                f"{data_channels}-channel items; use data.source=synthetic_video or video:PATH"
            )
        return 1

    def __init__(self, encoder: Backbone, cfg: VideoColorizationConfig, **kwargs) -> None:  # type: ignore[no-untyped-def]
        if encoder.in_channels != 1:
            raise ValueError(
                f"{self.name} encodes the L channel: the encoder must take 1 input channel, "
                f"got {encoder.in_channels}"
            )
        kwargs.pop("augment", None)
        super().__init__(encoder, cfg, augment="eval", **kwargs)
        lo, hi = cfg.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"method_args.crop_scale must be 0 < min <= max <= 1, got {lo, hi}")
        steps = [ToFloat(), RandomResizedCrop(self.image_size, scale=(lo, hi))]
        if cfg.flip:
            steps.append(RandomHorizontalFlip())
        self.clip_pipeline = Compose(steps)
        self.eval_pipeline = Compose([ToFloat(), Resize(self.image_size)])
        feat_dim = pyramid_channels(encoder, 1, self.image_size, cfg.feature_stride)
        self.head = DenseEmbedding(feat_dim, cfg.embedding_dim, cfg.hidden_dim)
        self.register_buffer("codebook", torch.zeros(cfg.clusters, 2))
        self.register_buffer("codebook_ready", torch.zeros(1, dtype=torch.uint8))

    # ------------------------------------------------------------------ building blocks
    def embed(self, light: Tensor) -> Tensor:
        """Scaled L (M, 1, S, S) (``lab_to_input(lab, "lab_l")``) -> embeddings (M, D, h, w)."""
        f = pyramid_features(
            self.encoder, light.contiguous(memory_format=self.memory_format),
            self.cfg.feature_stride,
        )  # fmt: skip
        return self.head(f)

    def select_frames(
        self, clips: Tensor, generator: torch.Generator, global_size: int | None, offset: int
    ) -> Tensor:
        """(N, T, 3, H, W) -> the R + 1 frames of each clip (N, R + 1, 3, H, W): a random start
        and gap, drawn for the global batch."""
        n, t = clips.shape[:2]
        span = self.cfg.reference_frames
        if t < span + 1:
            raise ValueError(
                f"{self.name}: clips of {t} frames are too short for {span} reference frames "
                "and a target (set data.options.frames or method_args.reference_frames)"
            )
        total = global_size or n
        u = torch.rand(total, 2, generator=generator, device=generator.device)[offset : offset + n]
        u = u.to(clips.device)
        max_gap = min(self.cfg.max_frame_gap, (t - 1) // span)
        gap = 1 + (u[:, 0] * max_gap).long().clamp_max(max_gap - 1)
        start = (u[:, 1] * (t - span * gap)).long().clamp_max(t - 1 - span * gap)
        index = start[:, None] + gap[:, None] * torch.arange(span + 1, device=clips.device)
        return clips[torch.arange(n, device=clips.device)[:, None], index]

    def to_lab(self, frames: Tensor) -> Tensor:
        """RGB frames (..., 3, S, S) in [0, 1] -> Lab float32."""
        with no_autocast(frames):
            return rgb_to_lab(frames.float().clamp(0.0, 1.0))

    @torch.no_grad()
    def fit_codebook(self, ab: Tensor, generator: torch.Generator) -> None:
        """Fit the k-means colour codebook on ab values (M, 2, h, w) of this batch (sampled,
        then gathered from every process so that all fit the same codebook)."""
        pts = ab.float().permute(0, 2, 3, 1).reshape(-1, 2)
        count = min(self.cfg.kmeans_samples, len(pts))
        idx = torch.randint(0, len(pts), (count,), generator=generator, device=generator.device)
        pts = gather_no_grad(pts[idx.to(pts.device)].contiguous())
        centres = kmeans(pts, self.cfg.clusters, self.cfg.kmeans_iterations,
                         torch.Generator().manual_seed(0))  # fmt: skip
        self.codebook.copy_(centres.to(self.codebook))
        self.codebook_ready.fill_(1)

    def _step(
        self, frames: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """Loss and metrics of RGB frames (N, R + 1, 3, S, S) in [0, 1] (references first),
        and the tensors pictures/metrics reuse."""
        n, f = frames.shape[:2]
        lab = self.to_lab(frames.flatten(0, 1))  # (N (R+1), 3, S, S)
        emb = self.embed(lab_to_input(lab, "lab_l"))  # (N (R+1), D, h, w)
        h, w = emb.shape[-2:]
        with no_autocast(lab):
            ab = F.adaptive_avg_pool2d(lab[:, 1:], (h, w))
        if not bool(self.codebook_ready):
            if generator is None:
                raise RuntimeError(f"{self.name}: the colour codebook is not fitted yet")
            self.fit_codebook(ab, generator)
        labels = quantize(ab, self.codebook).view(n, f, h * w)
        emb = emb.float().view(n, f, -1, h * w).transpose(2, 3)  # (N, R+1, hw, D)
        ref = emb[:, :-1].reshape(n, (f - 1) * h * w, -1)
        logits = copy_logits(emb[:, -1], ref, self.cfg.temperature)
        ref_labels = labels[:, :-1].reshape(n, -1)
        loss, copyable, uncopyable = colour_copy_loss_from_logits(logits, ref_labels, labels[:, -1])
        with torch.no_grad():
            onehot = F.one_hot(ref_labels, self.cfg.clusters).float()
            probs = copy_values(torch.softmax(logits.detach(), -1), onehot)
            right = (probs.argmax(-1) == labels[:, -1]) & copyable
            accuracy = right.sum() / copyable.sum().clamp_min(1)
        metrics = {"copy_accuracy": accuracy, "uncopyable": uncopyable}
        extra = {"lab": lab, "emb": emb, "ab": ab}
        return loss, metrics, extra

    def forward(  # type: ignore[override]
        self,
        images: Tensor,
        labels: Tensor | None,
        generator: torch.Generator,
        global_size: int | None = None,
        offset: int = 0,
    ) -> StepResult:
        clips = split_frames(images)
        frames = self.select_frames(clips, generator, global_size, offset)
        n, f = frames.shape[:2]
        flat = frames.reshape(n, f * 3, *frames.shape[-2:])
        with no_autocast(flat):  # colours are compared in float32
            views = self.clip_pipeline(flat, generator, global_size=global_size, offset=offset)
        loss, metrics, _ = self._step(views.view(n, f, 3, *views.shape[-2:]), generator)
        return loss, metrics

    # ------------------------------------------------------------------ evaluation
    def eval_frames(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Held-out clips (N, 3 T, H, W) uint8 -> their first R + 1 frames (N, R + 1, 3, S, S) in
        [0, 1], resized only."""
        clips = split_frames(images)[:, : self.cfg.reference_frames + 1]
        n, f = clips.shape[:2]
        flat = self.eval_pipeline(clips.reshape(n, f * 3, *clips.shape[-2:]), generator)
        return flat.view(n, f, 3, self.image_size, self.image_size).clamp(0, 1)

    @torch.no_grad()
    def copy_ab(self, emb: Tensor, ab: Tensor) -> Tensor:
        """Colour of the target frame copied from the references (continuous ab, attention at
        ``copy_temperature``): emb (N, R + 1, hw, D), ab (N (R+1), 2, h, w) -> (N, 2, h, w)."""
        n, f, hw, _ = emb.shape
        h, w = ab.shape[-2:]
        ref_ab = ab.view(n, f, 2, hw)[:, :-1].permute(0, 1, 3, 2).reshape(n, -1, 2)
        a = copy_attention(emb[:, -1], emb[:, :-1].reshape(n, -1, emb.shape[-1]),
                           self.cfg.copy_temperature)  # fmt: skip
        return copy_values(a, ref_ab).transpose(1, 2).reshape(n, 2, h, w)

    def _upsample(self, t: Tensor) -> Tensor:
        return F.interpolate(t, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)

    @torch.no_grad()
    def pretext_metrics(self, images: Tensor, generator: torch.Generator) -> dict[str, float]:
        """Copy loss and accuracy and the copied colourisation's errors on held-out clips,
        beside copying the last reference frame's colour in place (``static_*``)."""
        frames = self.eval_frames(images, generator)
        loss, metrics, extra = self._step(frames, generator)
        lab = extra["lab"].view(*frames.shape)
        target_lab, rgb = lab[:, -1], frames[:, -1]
        ab = self._upsample(self.copy_ab(extra["emb"], extra["ab"]))
        out = {"loss": float(loss), **{k: float(v) for k, v in metrics.items()}}
        out.update(colorization_errors(target_lab, ab, rgb))
        static = colorization_errors(target_lab, lab[:, -2, 1:], rgb)
        out["static_ab_l2_error"], out["static_psnr"] = static["ab_l2_error"], static["psnr"]
        return out

    @torch.no_grad()
    def pictures(self, images: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """``video_colorization``: one column per clip (at most 8), rows last reference frame /
        grey target / copied colours (target L + copied ab) / truth."""
        frames = self.eval_frames(images[:8], generator)
        _, _, extra = self._step(frames, generator)
        lab = extra["lab"].view(*frames.shape)
        light = lab[:, -1, :1]
        ab = self._upsample(self.copy_ab(extra["emb"], extra["ab"]))
        grey = lab_to_rgb(torch.cat([light, torch.zeros_like(ab)], 1))
        copied = lab_to_rgb(torch.cat([light, ab], 1))
        rows = [frames[:, -2], grey, copied, frames[:, -1]]
        return {"video_colorization": LabMethod.grid(rows)}
