#!/usr/bin/env python3
"""A small TD3-flavoured actor-critic trainer that can blow up, for trying gradwatch.

The actor and the critic each have a "cnn" part (two conv layers over an 8x8
RGB observation) and an "mlp" part (two linear layers). Every ``--log-every``
steps it logs, to ``LOGDIR/RUN``:

    gradients/{actor,critic}_{cnn,mlp}_norm   global L2 norm of each part's gradient, before any clipping
    loss/critic, loss/actor                   the two losses
    q/mean                                    mean Q-value of the batch

and it checks gradwatch's stop-file every step, stopping cleanly (writer
flushed and closed, reason printed, exit status 0) when it appears.

With torch it really trains on a synthetic replay buffer. The actor's action
head is linear (TD3 squashes it with tanh * max_action), so an actor with a
large learning rate runs past the actions the critic was trained on; the
critic's linear extrapolation rewards ever larger actions, the bootstrapped
target compounds the overestimation, and Q-values and gradient norms grow
polynomially, as in the run gradwatch was built for (5,191 -> 130,486 ->
826,256 -> 2.9M -> 7.5M over steps 100..500). The learning rate sets how fast
(measured with seeds 0, 1 and 2; each seed is reproducible run to run):

    --lr 1e-2   the actor norms cross 10,000 by step ~130 and 50,000 by step ~160
    --lr 3e-3   they cross 10,000 by step ~270 and 50,000 by step ~380
    --lr 1e-5   (default) every norm stays below ~30 over 10,000 steps

The drift is built into this synthetic setup, so a small learning rate slows
it down rather than removing it: far beyond 10,000 steps even --lr 1e-5 drifts.

Without torch (or with ``--backend sim``) it simulates the same curves with
the standard library, so the demo also runs where torch is not installed.

Run it beside ``gradwatch watch`` (see examples/README.md)::

    python examples/actor_critic.py --logdir runs --run td3 --lr 3e-3 --step-delay 0.02
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from typing import Any, ClassVar

try:
    from gradwatch.trainer import StopFile, log_grad_norms, stop_file_path
except ImportError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from gradwatch.trainer import StopFile, log_grad_norms, stop_file_path

GROUPS = ("actor_cnn", "actor_mlp", "critic_cnn", "critic_mlp")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--logdir", default="runs", help="TensorBoard logdir (default: runs)")
    p.add_argument("--run", default="td3", help="run name, a directory under the logdir (default: td3)")
    p.add_argument("--lr", type=float, default=1e-5, help="Adam learning rate; 3e-3 explodes (default: 1e-5)")
    p.add_argument("--steps", type=int, default=1000, help="training steps (default: 1000)")
    p.add_argument("--log-every", type=int, default=100, help="log scalars every N steps (default: 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--step-delay", type=float, default=0.0, help="sleep this many seconds per step")
    p.add_argument(
        "--stop-file",
        help="stop-file to check every step (default: LOGDIR/RUN/gradwatch-stop.json, the daemon's default)",
    )
    p.add_argument(
        "--clear-stop-file", action="store_true", help="delete a stop-file left by an earlier run first"
    )
    p.add_argument("--backend", choices=("auto", "torch", "sim"), default="auto")
    p.add_argument("--writer", choices=("auto", "torch", "tensorboardx", "tensorboard"), default="auto")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print a line per logged step")
    args = p.parse_args(argv)
    if args.steps < 0:
        p.error("--steps must be >= 0")
    if args.log_every < 1:
        p.error("--log-every must be >= 1")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        p.error("--lr must be a positive number")
    if not (args.step_delay >= 0 and math.isfinite(args.step_delay)):
        p.error("--step-delay must be >= 0")
    return args


# --- writers ------------------------------------------------------------------


class _TensorBoardWriter:
    """add_scalar over tensorboard's own EventFileWriter (tensorboard is a gradwatch dependency)."""

    def __init__(self, log_dir: str) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        self._writer = EventFileWriter(log_dir)

    def add_scalar(self, tag: str, scalar_value: float, global_step: int | None = None) -> None:
        value = self._summary.Value(tag=tag, simple_value=float(scalar_value))
        self._writer.add_event(
            self._event(wall_time=time.time(), step=global_step or 0, summary=self._summary(value=[value]))
        )

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def open_writer(kind: str, log_dir: str) -> tuple[Any, str]:
    """(writer, name): torch's SummaryWriter, else tensorboardX's, else tensorboard's EventFileWriter."""
    kinds = ("torch", "tensorboardx", "tensorboard") if kind == "auto" else (kind,)
    for k in kinds:
        try:
            if k == "torch":
                from torch.utils.tensorboard import SummaryWriter
            elif k == "tensorboardx":
                from tensorboardX import SummaryWriter
            else:
                return _TensorBoardWriter(log_dir), k
        except ImportError:
            if kind != "auto":
                raise
            continue
        # flush_secs: the default 120 s would hide points from gradwatch for two minutes
        return SummaryWriter(log_dir, flush_secs=5), k
    raise AssertionError("unreachable: the tensorboard writer always imports")


# --- trainers -----------------------------------------------------------------


class TorchTrainer:
    """Real training of a tiny actor-critic on a synthetic replay buffer."""

    name = "torch"
    obs_shape = (3, 8, 8)
    act_dim = 2
    buffer_size = 1024
    batch_size = 32
    gamma = 0.99
    tau = 0.005  # Polyak averaging of the target networks, TD3's value
    done_probability = 0.1

    def __init__(self, lr: float, seed: int) -> None:
        import copy

        import torch
        from torch import nn

        self.torch, self.F = torch, torch.nn.functional
        torch.manual_seed(seed)
        # tiny tensors: threads only add overhead and run-to-run variation
        torch.set_num_threads(1)

        def cnn() -> nn.Module:
            return nn.Sequential(
                nn.Conv2d(3, 4, 3, stride=2), nn.LeakyReLU(0.1), nn.Conv2d(4, 8, 3), nn.LeakyReLU(0.1),
                nn.Flatten(),
            )  # fmt: skip

        features = 8  # 8x8 -> 3x3 -> 1x1, 8 channels

        class Actor(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.cnn = cnn()
                # linear action head, no tanh: what lets a fast actor run away (see module docstring)
                self.mlp = nn.Sequential(nn.Linear(features, 32), nn.LeakyReLU(0.1), nn.Linear(32, 2))

            def forward(self, obs):
                return self.mlp(self.cnn(obs))

        class Critic(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.cnn = cnn()
                self.mlp = nn.Sequential(nn.Linear(features + 2, 32), nn.LeakyReLU(0.1), nn.Linear(32, 1))

            def forward(self, obs, action):
                return self.mlp(torch.cat([self.cnn(obs), action], 1)).squeeze(1)

        n = self.buffer_size
        self.obs = torch.rand(n, *self.obs_shape)
        self.next_obs = torch.rand(n, *self.obs_shape)
        self.actions = torch.rand(n, self.act_dim) * 2 - 1
        self.rewards = torch.randn(n) + 1.0
        self.not_done = (torch.rand(n) >= self.done_probability).float()
        self.actor, self.critic = Actor(), Critic()
        self.actor_target, self.critic_target = copy.deepcopy(self.actor), copy.deepcopy(self.critic)
        self.actor_parts = {"actor_cnn": self.actor.cnn, "actor_mlp": self.actor.mlp}
        self.critic_parts = {"critic_cnn": self.critic.cnn, "critic_mlp": self.critic.mlp}
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=lr, foreach=True)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=lr, foreach=True)
        self.sampler = torch.Generator().manual_seed(seed)
        self.targets = [
            (list(self.actor_target.parameters()), list(self.actor.parameters())),
            (list(self.critic_target.parameters()), list(self.critic.parameters())),
        ]

    def step(self, step: int, writer: Any | None) -> dict[str, float] | None:
        """One update of critic and actor; with a writer, log this step's scalars and return them."""
        torch, F = self.torch, self.F
        idx = torch.randint(0, self.buffer_size, (self.batch_size,), generator=self.sampler)
        obs, action, reward = self.obs[idx], self.actions[idx], self.rewards[idx]
        next_obs, not_done = self.next_obs[idx], self.not_done[idx]
        with torch.no_grad():
            next_q = self.critic_target(next_obs, self.actor_target(next_obs))
            target_q = reward + self.gamma * not_done * next_q
        q = self.critic(obs, action)
        critic_loss = F.smooth_l1_loss(q, target_q)
        self.critic_opt.zero_grad()
        critic_loss.backward()
        out: dict[str, float] = {}
        if writer is not None:  # before the optimizer step (and before any clipping would go)
            out.update(log_grad_norms(writer, self.critic_parts, step))
        self.critic_opt.step()

        actor_loss = -self.critic(obs, self.actor(obs)).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        if writer is not None:
            out.update(log_grad_norms(writer, self.actor_parts, step))
        self.actor_opt.step()

        with torch.no_grad():
            for target, source in self.targets:
                torch._foreach_lerp_(target, source, self.tau)
        if writer is None:
            return None
        out.update(critic_loss=critic_loss.item(), actor_loss=actor_loss.item(), q=q.detach().mean().item())
        writer.add_scalar("loss/critic", out["critic_loss"], step)
        writer.add_scalar("loss/actor", out["actor_loss"], step)
        writer.add_scalar("q/mean", out["q"], step)
        return out


class SimulatedTrainer:
    """Standard-library stand-in: roughly the torch trainer's curves, without training.

    The runaway grows like (lr * step)^4.5, the polynomial that Adam's bounded
    steps give the torch trainer; the constants put --lr 3e-3 past 50,000 near
    step 300 and keep --lr 1e-5 below 10 over 10,000 steps.
    """

    name = "sim"
    base: ClassVar = {"actor_cnn": 0.05, "actor_mlp": 0.1, "critic_cnn": 0.5, "critic_mlp": 0.8}
    growth: ClassVar = {"actor_cnn": 1.0, "actor_mlp": 1.4, "critic_cnn": 0.2, "critic_mlp": 0.35}
    scale = 0.08  # lr * step at which the runaway term reaches 1

    def __init__(self, lr: float, seed: int) -> None:
        self.lr = lr
        self.rng = random.Random(seed)

    def step(self, step: int, writer: Any | None) -> dict[str, float] | None:
        runaway = (self.lr * step / self.scale) ** 4.5
        noise = {g: math.exp(self.rng.gauss(0.0, 0.2)) for g in GROUPS}
        if writer is None:
            return None
        out = {g: (self.base[g] + self.growth[g] * runaway) * noise[g] for g in GROUPS}
        out["q"] = 1.0 + 0.5 * runaway * noise["critic_cnn"]
        out["critic_loss"] = 0.5 + 0.01 * runaway * noise["critic_mlp"]
        out["actor_loss"] = -out["q"]
        for g in GROUPS:
            writer.add_scalar(f"gradients/{g}_norm", out[g], step)
        writer.add_scalar("loss/critic", out["critic_loss"], step)
        writer.add_scalar("loss/actor", out["actor_loss"], step)
        writer.add_scalar("q/mean", out["q"], step)
        return out


def make_trainer(backend: str, lr: float, seed: int) -> TorchTrainer | SimulatedTrainer:
    if backend in ("auto", "torch"):
        try:
            import torch  # noqa: F401
        except ImportError:
            if backend == "torch":
                raise
        else:
            return TorchTrainer(lr, seed)
    return SimulatedTrainer(lr, seed)


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run_dir = os.path.join(args.logdir, args.run)
    stop = StopFile(args.stop_file or stop_file_path(args.logdir, args.run))
    try:
        if args.clear_stop_file and stop.clear():
            print(f"removed stale stop-file {stop.path}")
        trainer = make_trainer(args.backend, args.lr, args.seed)
        writer, writer_name = open_writer(args.writer, run_dir)
    except ImportError as e:
        print(f"actor_critic.py: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"actor_critic.py: {e.filename or run_dir}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(
        f"training: backend {trainer.name}, writer {writer_name}, lr {args.lr:g}, {args.steps} steps, "
        f"logging to {run_dir} every {args.log_every}, stop-file {stop.path}",
        flush=True,
    )
    reason = None
    done = 0  # steps completed
    try:
        for step in range(1, args.steps + 1):
            reason = stop.check()
            if reason is not None:
                break
            log_now = step % args.log_every == 0
            out = trainer.step(step, writer if log_now else None)
            done = step
            if out is not None:
                writer.flush()  # so gradwatch sees this step now, not when the writer's buffer fills
                if not args.quiet:
                    norms = "  ".join(f"{g} {_fmt(out[g])}" for g in GROUPS)
                    print(f"step {step:>6}  {norms}  q {_fmt(out['q'])}", flush=True)
            if args.step_delay:
                time.sleep(args.step_delay)
    except KeyboardInterrupt:
        print(f"interrupted after step {done}", file=sys.stderr)
        return 130
    finally:
        writer.close()
    if reason is not None:
        print(reason)
        print(f"stopped cleanly after step {done}; event file flushed and closed", flush=True)
    else:
        print(f"finished {done} steps", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
