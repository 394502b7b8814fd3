"""The learner: one V-trace actor-critic update per rollout.

Loss (Espeholt et al. 2018), reduced by ``sum`` over time and batch by default (as the paper and
torchbeast do; ``mean`` divides by the number of valid steps):
    policy  = -sum_t log pi(a_t | x_t) * pg_advantage_t
    value   = 0.5 * sum_t (v_s,t - V(x_t))^2                 (weighted by baseline_cost)
    entropy = -sum_t H(pi(. | x_t))                           (weighted by entropy_cost)
Transitions out of a terminal frame (the env's auto-reset step, whose action had no effect) are
masked out of every term and cut the V-trace trace. Bootstrapping stops only at true terminals
(and, with ``--life-loss``, at lost lives): a step-cap truncation bootstraps from the value of its
last frame.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from agent.cores.moe_elstm import MoEELSTMCore
from agent.model import ActorCritic, Inputs
from train import tags
from train.actor import Rollout
from train.config import ADAM_BETAS, ADAM_EPS, LearnerConfig, RunConfig
from train.distributed import World
from train.expert_optimizer import ExpertOptimizer, expert_rule
from train.vtrace import vtrace


class Learner:
    def __init__(self, model: ActorCritic, cfg: RunConfig, device: torch.device, world: World | None = None):
        """``world``: the ranks whose gradients are summed (``train/distributed.py``; None = this
        process alone), each with ``cfg.env.num_envs / world.size`` of the streams. A MoE core agrees
        on its experts through the ``collectives`` it was built with (``World.collectives``)."""
        self.model, self.cfg, self.device = model, cfg, device
        self.world = world or World()
        lc = cfg.learner
        self.optimizer = make_optimizer(list(model.parameters()), lc)
        core = model.core
        # The experts live in the store (train/experts.py attaches it before the first update).
        self.expert_optimizer = ExpertOptimizer(
            core, expert_rule(lc), evict_after_use=cfg.store.prefetch == "none"
        ) if isinstance(core, MoEELSTMCore) else None
        # --lr-schedule linear decays over the whole run (all stages), measured in updates; the last
        # update still learns. An optional linear warm-up over the first lr_warmup updates.
        total_updates, warmup = cfg.total_updates(), lc.lr_warmup
        decays = lc.lr_schedule == "linear"
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda update: min(1.0, (update + 1) / warmup if warmup else 1.0)
            * (max(0.0, 1.0 - update / total_updates) if decays else 1.0))
        self.version = 0
        self.carry: Any = model.core.learner_carry(self.world.local_envs(cfg.env.num_envs), device)

    def update(self, rollout: Rollout) -> dict[str, float]:
        """One optimizer step on ``rollout``; returns the scalars to log."""
        t0 = time.perf_counter()
        reduced = self.world.bytes_reduced
        lc = self.cfg.learner
        r = _to_device(rollout, self.device)
        clipped = r.reward.clamp(-self.cfg.env.reward_clip, self.cfg.env.reward_clip)
        inp = Inputs(frames=r.frames, prev_action=r.prev_action, reward=clipped, first=r.first, game_id=r.game_id,
                     allowed=r.allowed)
        core = self.model.core
        logits, values, context = self.model.learner_forward(inp, r.initial_state, self.carry, self.cfg.model.unroll)

        log_probs = F.log_softmax(logits[:-1], dim=-1)
        actions = r.action[:-1].unsqueeze(-1)
        target_logp = log_probs.gather(-1, actions).squeeze(-1)
        behaviour_logp = F.log_softmax(r.behaviour_logits[:-1], dim=-1).gather(-1, actions).squeeze(-1)
        valid = ~r.done[:-1]
        # Bootstrapping stops at true terminals, and with --life-loss at a lost life too (the game
        # goes on, and so does the core state: only the value target treats it as an end).
        ends = r.terminated[1:] | r.life_lost[1:] if self.cfg.env.life_loss else r.terminated[1:]
        returns = vtrace(
            log_rhos=(target_logp - behaviour_logp).detach(),
            discounts=lc.discount * (~ends).to(values.dtype),
            rewards=clipped[1:], values=values[:-1].detach(), bootstrap_value=values[-1].detach(),
            valid=valid, rho_bar=lc.rho_bar, c_bar=lc.c_bar, pg_rho_bar=lc.pg_rho_bar,
        )
        mask = valid.to(values.dtype)
        pg_loss = -(target_logp * returns.pg_advantages * mask).sum()
        value_loss = 0.5 * ((returns.vs - values[:-1]) ** 2 * mask).sum()
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        entropy_loss = -(entropy * mask).sum()
        total = pg_loss + lc.baseline_cost * value_loss + lc.entropy_cost * entropy_loss
        aux = core.learner_aux_loss(context)
        if aux is not None:
            total = total + aux
        if lc.loss_reduction == "mean":  # over the valid steps of every rank's streams
            valid_steps = mask.sum().detach().reshape(1)
            self.world.all_reduce_sum([valid_steps])
            total = total / valid_steps.clamp(min=1.0)[0]

        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.carry = core.learner_after_backward(context)
        # One global norm over the dense gradients and those the core keeps itself (experts in a store),
        # scaled as torch.nn.utils.clip_grad_norm_ does.
        # This rank's loss is its share of the global batch's: summed over the ranks, the gradients
        # are the global batch's, the same on every rank (dense first, then the agreed experts').
        if self.world.size > 1:
            for p in self.model.parameters():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
        grads = [p.grad for p in self.model.parameters() if p.grad is not None] + core.learner_grads()
        self.world.all_reduce_sum(grads)
        grad_norm = torch.nn.utils.get_total_norm(grads)
        scale = torch.clamp(lc.grad_norm_clip / (grad_norm + 1e-6), max=1.0)
        for g in grads:
            g.mul_(scale)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        if self.expert_optimizer is not None:
            self.expert_optimizer.step(lr)
        self.scheduler.step()
        self.version += 1
        return {
            tags.LOSS_POLICY: pg_loss.item(), tags.LOSS_VALUE: value_loss.item(),
            tags.LOSS_ENTROPY: entropy_loss.item(), tags.LOSS_TOTAL: total.item(),
            tags.GRAD_NORM: grad_norm.item(), tags.LEARNING_RATE: self.scheduler.get_last_lr()[0],
            tags.POLICY_LAG: float(self.version - 1 - rollout.param_version),
            tags.LEARN_TIME: time.perf_counter() - t0,
            **tags.core_stats(core.learner_stats()),
            **({tags.ALLREDUCE_BYTES: float(self.world.bytes_reduced - reduced)} if self.world.size > 1 else {}),
        }

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "version": self.version}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.version = state["version"]
        # The schedule follows this run's config, not the saved one (--allow-config-change --lr X).
        base = self.cfg.learner.learning_rate
        self.scheduler.base_lrs = [base] * len(self.optimizer.param_groups)
        factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        for group in self.optimizer.param_groups:
            group["initial_lr"], group["lr"] = base, base * factor


def make_optimizer(params: list[torch.nn.Parameter], lc: LearnerConfig) -> torch.optim.Optimizer:
    """The dense weights' optimizer (``--optimizer``). ``rmsprop-tf`` is torch's RMSprop with every
    square average started at 1, as TensorFlow's RMSProp (the IMPALA paper's code) starts it: the
    first steps are then about lr * g, where a zero start makes them lr * sign(g) / sqrt(1 - alpha)."""
    if lc.optimizer == "adam":
        return torch.optim.Adam(params, lr=lc.learning_rate, betas=ADAM_BETAS, eps=ADAM_EPS)
    optimizer = torch.optim.RMSprop(params, lr=lc.learning_rate, alpha=lc.rmsprop_alpha, eps=lc.rmsprop_eps,
                                    momentum=lc.rmsprop_momentum)
    if lc.optimizer == "rmsprop-tf":
        for p in params:
            # torch fills a parameter's state only when it is empty (torch/optim/rmsprop.py _init_group).
            optimizer.state[p] = {"step": torch.tensor(0.0), "square_avg": torch.ones_like(p),
                                  **({"momentum_buffer": torch.zeros_like(p)} if lc.rmsprop_momentum else {})}
    return optimizer


def _to_device(r: Rollout, device: torch.device) -> Rollout:
    if device.type == "cpu":
        return r
    moved = {k: v.to(device, non_blocking=True) for k, v in vars(r).items() if isinstance(v, torch.Tensor)}
    return Rollout(**{**vars(r), **moved, "initial_state": tuple(s.to(device) for s in r.initial_state)})
