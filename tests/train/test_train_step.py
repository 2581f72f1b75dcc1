"""The Trainer's optimizer step (``TrainStep``) on its own: update, hooks, non-finite guard."""

import torch
from torch import nn

from selfsup.train.trainer import TrainStep


class Toy(nn.Module):
    """A one-weight 'method': loss = scale * w * (noise drawn from the step's generator)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.scale = 1.0
        self.hooks: list[tuple[str, int]] = []
        self.noise: list[float] = []

    def forward(self, images, labels, generator, global_size, offset):
        noise = torch.rand(1, generator=generator)
        self.noise.append(float(noise))
        return (self.scale * self.w * (1 + noise)).sum(), {"noise": float(noise)}

    def before_optimizer_step(self, step: int, total_steps: int) -> None:
        self.hooks.append(("before", step))

    def on_after_step(self, step: int, total_steps: int) -> None:
        self.hooks.append(("after", step))


def make_step(toy: Toy, grad_clip: float | None = None) -> TrainStep:
    return TrainStep(
        method=toy,  # type: ignore[arg-type]
        forward=toy,
        optimizer=torch.optim.SGD(toy.parameters(), lr=0.1),
        scaler=torch.amp.GradScaler("cuda", enabled=False),
        amp_dtype=None,
        device=torch.device("cpu"),
        seed=3,
        grad_clip=grad_clip,
        total_steps=10,
    )


def test_a_finite_step_updates_the_weights_and_calls_both_hooks_in_order():
    toy = Toy()
    loss, metrics, applied = make_step(toy)(torch.zeros(2, 3, 4, 4), None, 2, 0, step=5)
    assert applied and torch.isfinite(loss)
    assert float(toy.w) < 1.0  # gradient of w * (1 + noise) is positive: SGD lowers w
    assert toy.hooks == [("before", 5), ("after", 5)]
    assert float(metrics["grad_norm"]) > 0 and "noise" in metrics


def test_the_generator_depends_on_seed_and_step_only():
    toy = Toy()
    step = make_step(toy)
    x = torch.zeros(2, 3, 4, 4)
    step(x, None, 2, 0, step=1)
    step(x, None, 2, 0, step=2)
    step(x, None, 2, 0, step=1)
    assert toy.noise[0] == toy.noise[2] != toy.noise[1]


def test_a_non_finite_loss_applies_nothing_and_skips_the_hooks():
    toy = Toy()
    toy.scale = float("nan")
    loss, _, applied = make_step(toy)(torch.zeros(2, 3, 4, 4), None, 2, 0, step=0)
    assert not applied and not torch.isfinite(loss)
    assert float(toy.w) == 1.0
    assert toy.w.grad is None  # gradients zeroed, not left for the next step
    assert toy.hooks == []


def test_grad_clip_bounds_the_applied_update():
    toy = Toy()
    toy.scale = 1000.0
    make_step(toy, grad_clip=1.0)(torch.zeros(2, 3, 4, 4), None, 2, 0, step=0)
    assert abs(1.0 - float(toy.w)) <= 0.1 + 1e-6  # lr 0.1 x clipped norm 1
