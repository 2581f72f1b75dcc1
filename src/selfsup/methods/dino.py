"""DINO (Caron et al., 2021): self-distillation with no labels.

A student (encoder + :class:`~selfsup.heads.dino.DINOHead`) is trained to match the output
distribution of a teacher, the student's exponential moving average, across views of the same
image:

- **Multi-crop.** Each image gives 2 global crops (``image_size``, scale ``global_crop_scale``)
  and ``num_local_crops`` local crops (``local_crop_size``, scale ``local_crop_scale``), all
  made by the batched augmenter from the run's named pipeline with its crop swapped. The
  teacher sees only the global crops, the student every crop. Local crops have a smaller
  resolution: ResNets absorb it with global pooling, the ViT interpolates its position
  embedding (:meth:`selfsup.backbones.vit.PatchEmbed.pos_embed_for`).
- **Loss.** ``softmax((t - c) / T_t)`` of the teacher against ``log_softmax(s / T_s)`` of the
  student, cross-entropy over every (teacher view, student view) pair of different views,
  averaged (:func:`selfsup.losses.dino.dino_loss`).
- **Centering** (``c``, a (1, K) buffer) and **sharpening** (a low teacher temperature ``T_t``,
  warmed up linearly from ``warmup_teacher_temp`` to ``teacher_temp`` over
  ``warmup_teacher_temp_epochs``) together avoid collapse.
- **Teacher momentum** from ``base_momentum`` (0.996) to 1 with the cosine schedule.

State updates happen in :meth:`DINO.on_after_step`, after an applied optimizer step, in this
order: the EMA teacher update, then the centre ``c <- m c + (1 - m) mean(teacher logits)``,
the mean taken over the teacher outputs (both global crops) of the **global** batch of the step
(the per-process mean is all-reduced, so DDP equals one process), as in the paper where the
centre is updated right after the loss. A skipped (non-finite) step changes neither.
The step counter behind the temperature schedule is a buffer, so resume is exact.

``freeze_last_layer_epochs`` cancels the gradients of the prototype layer during the first
epochs (DINO's stabiliser), via :meth:`Method.before_optimizer_step`.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor

from selfsup.augment import GaussianBlur, recrop_pipeline
from selfsup.heads.dino import DINOHead
from selfsup.losses.dino import dino_loss, dino_teacher_probs
from selfsup.methods.base import Method, MethodConfig, StepResult
from selfsup.methods.momentum import EMA
from selfsup.methods.monitor import collapse_metrics
from selfsup.utils.distributed import all_reduce_mean


class DINOConfig(MethodConfig):
    out_dim: int = Field(default=65536, gt=0)
    """Number of prototypes K (65536 for ImageNet; a few thousand suit CIFAR)."""
    hidden_dim: int = Field(default=2048, gt=0)
    bottleneck_dim: int = Field(default=256, gt=0)
    head_layers: int = Field(default=3, ge=1)
    use_bn_in_head: bool = False
    norm_last_layer: bool = True
    """Fix the prototypes' norms to 1 (``weight_g`` frozen); more stable, DINO's default."""
    base_momentum: float = Field(default=0.996, ge=0, le=1)
    momentum_schedule: str = Field(default="cosine", pattern="^(cosine|constant)$")
    student_temp: float = Field(default=0.1, gt=0)
    teacher_temp: float = Field(default=0.04, gt=0)
    """Teacher temperature after the warm-up (0.04; 0.07 for some recipes)."""
    warmup_teacher_temp: float = Field(default=0.04, gt=0)
    warmup_teacher_temp_epochs: float = Field(default=0.0, ge=0)
    """Linear warm-up of the teacher temperature from ``warmup_teacher_temp``, in epochs."""
    center_momentum: float = Field(default=0.9, ge=0, le=1)
    num_local_crops: int = Field(default=6, ge=0)
    global_crop_scale: tuple[float, float] = (0.4, 1.0)
    """Crop area range of the global crops (DINO's default 0.4-1; ImageNet-style recipes with
    many local crops also use 0.14-1 with local crops at 0.05-0.14)."""
    local_crop_scale: tuple[float, float] = (0.05, 0.4)
    local_crop_size: int | None = Field(default=None, gt=0)
    """Side of the local crops; None: ``image_size // 2`` (16 px for 32 px images)."""
    global_blur_probs: tuple[float, float] = (1.0, 0.1)
    """Blur probability of the first and second global crop, used only when the named
    pipeline blurs (``simclr_imagenet``); local crops keep the pipeline's own probability."""
    solarize_prob: float = Field(default=0.2, ge=0, le=1)
    """Solarization probability of the second global crop (BYOL/DINO's asymmetry)."""
    freeze_last_layer_epochs: float = Field(default=1.0, ge=0)
    """Cancel the prototype layer's gradients for this many first epochs (0: never)."""


class DINO(Method):
    name = "dino"
    family = "self-distillation"
    description = (
        "student matches an EMA teacher's centred, sharpened prototype distribution across "
        "global and local crops (multi-crop cross-entropy)"
    )
    Config = DINOConfig
    default_augment = "simclr_cifar"

    def __init__(self, encoder, cfg: DINOConfig, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(encoder, cfg, **kwargs)
        self.head = DINOHead(
            encoder.feature_dim,
            out_dim=cfg.out_dim,
            hidden_dim=cfg.hidden_dim,
            bottleneck_dim=cfg.bottleneck_dim,
            num_layers=cfg.head_layers,
            use_bn=cfg.use_bn_in_head,
            norm_last_layer=cfg.norm_last_layer,
        )
        self.teacher = EMA(self._student(), cfg.base_momentum, cfg.momentum_schedule)
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))
        self.register_buffer("train_step", torch.zeros((), dtype=torch.long))
        self._batch_center: Tensor | None = None

        self.local_crop_size = cfg.local_crop_size or max(1, self.image_size // 2)
        blurs = any(isinstance(t, GaussianBlur) for t in self.pipeline.transforms)
        b1, b2 = cfg.global_blur_probs if blurs else (None, None)
        self.global_pipelines = [
            recrop_pipeline(self.pipeline, self.image_size, cfg.global_crop_scale, blur_p=b1),
            recrop_pipeline(
                self.pipeline,
                self.image_size,
                cfg.global_crop_scale,
                blur_p=b2,
                solarize_p=cfg.solarize_prob,
            ),
        ]
        self.local_pipeline = recrop_pipeline(
            self.pipeline, self.local_crop_size, cfg.local_crop_scale
        )

    def _student(self) -> dict[str, torch.nn.Module]:
        return {"encoder": self.encoder, "head": self.head}

    # --- schedules -------------------------------------------------------------------------
    def teacher_temperature(self, step: int | None = None) -> float:
        """Teacher temperature at ``step`` (default: the current step): linear from
        ``warmup_teacher_temp`` at step 0 to ``teacher_temp`` at step
        ``warmup_teacher_temp_epochs * steps_per_epoch``, constant afterwards."""
        cfg = self.cfg
        k = int(self.train_step) if step is None else step
        warm = cfg.warmup_teacher_temp_epochs * self.steps_per_epoch
        if k >= warm:
            return cfg.teacher_temp
        return cfg.warmup_teacher_temp + (cfg.teacher_temp - cfg.warmup_teacher_temp) * k / warm

    # --- views -----------------------------------------------------------------------------
    def crops(
        self,
        images: Tensor,
        generator: torch.Generator,
        global_size: int | None = None,
        offset: int = 0,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Multi-crop views of a uint8 batch (N, C, H, W): 2 global crops (N, C, S, S) and
        ``num_local_crops`` local crops (N, C, s, s), S = ``image_size``, s =
        ``local_crop_size``. Drawn in that order from ``generator``, each for the global batch
        of ``global_size`` rows and sliced at ``offset``."""
        kw = {"global_size": global_size, "offset": offset}
        fmt = self.memory_format
        g = [
            p(images, generator, **kw).contiguous(memory_format=fmt) for p in self.global_pipelines
        ]
        loc = [
            self.local_pipeline(images, generator, **kw).contiguous(memory_format=fmt)
            for _ in range(self.cfg.num_local_crops)
        ]
        return g, loc

    # --- step ------------------------------------------------------------------------------
    def _teacher_outputs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher bottleneck (N, bottleneck_dim) and logits (N, K) float, no gradient."""
        with torch.no_grad():
            head = self.teacher["head"]
            z = head.bottleneck(self.teacher["encoder"](x))
            return z.float(), head.last_layer(z).float()

    def forward(  # type: ignore[override]
        self,
        images: Tensor,
        labels: Tensor | None,
        generator: torch.Generator,
        global_size: int | None = None,
        offset: int = 0,
    ) -> StepResult:
        global_crops, local_crops = self.crops(images, generator, global_size, offset)
        xg = torch.cat(global_crops)  # (2N, C, S, S)
        student = list(self.head(self.encoder(xg)).chunk(2))
        if local_crops:
            xl = torch.cat(local_crops)  # (L*N, C, s, s)
            student += list(self.head(self.encoder(xl)).chunk(len(local_crops)))
        t_z, t_logits = self._teacher_outputs(xg)  # (2N, B), (2N, K)
        temp = self.teacher_temperature()
        probs = dino_teacher_probs(t_logits, self.center, temp)
        loss = dino_loss(student, list(probs.chunk(2)), self.cfg.student_temp)
        # the centre moves in on_after_step, with this batch's teacher mean
        self._batch_center = t_logits.mean(dim=0, keepdim=True)
        with torch.no_grad():
            entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1).mean()
        return loss, {
            "teacher_entropy": entropy,
            # every teacher view pairs with the same number of student views, so the mean
            # cross-entropy minus the mean teacher entropy is the mean KL(teacher || student)
            "teacher_student_kl": loss.detach() - entropy,
            "center_norm": self.center.norm(),
            "teacher_temperature": temp,
            "teacher_momentum": self.teacher.momentum.clone(),
            **collapse_metrics(t_z),
        }

    def before_optimizer_step(self, step: int, total_steps: int) -> None:
        """Cancel the prototype layer's gradients during the first
        ``freeze_last_layer_epochs`` (the optimizer then skips it: no update, no decay)."""
        if step < round(self.cfg.freeze_last_layer_epochs * self.steps_per_epoch):
            for p in self.head.last_layer.parameters():
                p.grad = None

    @torch.no_grad()
    def update_center(self, batch_center: Tensor) -> None:
        """``c <- m c + (1 - m) b`` with ``b`` (1, K) this process's mean teacher logits,
        averaged over processes first (equal shards: the global batch mean)."""
        b = all_reduce_mean(batch_center.detach().float())
        m = self.cfg.center_momentum
        self.center.mul_(m).add_(b.to(self.center.dtype), alpha=1.0 - m)

    def on_after_step(self, step: int, total_steps: int) -> None:
        self.teacher.update(self._student(), step, total_steps)
        if self._batch_center is not None:
            self.update_center(self._batch_center)
            self._batch_center = None
        self.train_step.fill_(step + 1)

    # --- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def pretext_metrics(self, images: Tensor, generator: torch.Generator) -> dict[str, float]:
        """On held-out images: how often the teacher's top prototype (after centering) is the
        same for the two global crops of an image, and the entropy (nats) of the teacher's
        centred, sharpened distribution, next to its maximum ``log K``."""
        g1 = self.global_pipelines[0](images, generator)
        g2 = self.global_pipelines[1](images, generator)
        _, logits = self._teacher_outputs(torch.cat([g1, g2]))
        centred = logits - self.center
        a, b = centred.argmax(-1).chunk(2)
        probs = torch.softmax(centred / self.teacher_temperature(), dim=-1)
        entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1).mean()
        return {
            "teacher_view_agreement": float((a == b).float().mean()),
            "teacher_entropy": float(entropy),
            "teacher_entropy_max": math.log(self.cfg.out_dim),
        }
