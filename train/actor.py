"""The actor thread: steps the env streams with its own copy of the policy and ships rollouts.

Policy lag is exactly one update, as in cleanba: rollouts 0 and 1 are collected with the initial
parameters; before rollout k >= 2 the actor waits for the parameters the learner published after
its update on rollout k - 2, so rollout k is trained on (at version k) by parameters exactly one
update newer than those that collected it (version k - 1). The actor reads only its own copy of
the parameters, which the learner never writes, so it always acts with one consistent version.
"""

from __future__ import annotations

import copy
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from agent.cores import State
from agent.model import ActorCritic, step_inputs
from envs.atari import AtariVecEnv, EnvStep


@dataclass
class Rollout:
    """T + 1 steps of B streams, time first; step 0 repeats the previous rollout's last step.

    frames uint8 [T+1, B, 4, 84, 84]; reward float32 [T+1, B] raw reward that arrived with frame t;
    first / terminated / done bool [T+1, B] (frame t starts an episode / ends one by the game's
    rules / ends one by rules or the step cap); life_lost bool [T+1, B] (the game took a life at frame
    t without ending the episode; ``--life-loss`` cuts the bootstrap there); prev_action, action int64 [T+1, B] (the action
    before / chosen at frame t); behaviour_logits float32 [T+1, B, A]; game_id int64 [T+1, B];
    allowed bool [T+1, B, A_env] or None, the env's per-step action mask (``EnvStep.allowed``).
    initial_state: the actor's core state before step 0. episodes: (raw return, length) of the
    episodes that ended inside the rollout. param_version: the parameter version that acted.
    env_time, act_time: seconds spent stepping envs and running the policy. started: the actor's
    ``time.perf_counter()`` when it began this rollout's first env step (seconds).
    """

    frames: torch.Tensor
    reward: torch.Tensor
    first: torch.Tensor
    terminated: torch.Tensor
    done: torch.Tensor
    life_lost: torch.Tensor
    prev_action: torch.Tensor
    action: torch.Tensor
    behaviour_logits: torch.Tensor
    game_id: torch.Tensor
    initial_state: State
    allowed: torch.Tensor | None = None
    episodes: list[tuple[float, int]] = field(default_factory=list)
    param_version: int = 0
    env_time: float = 0.0
    act_time: float = 0.0
    started: float = 0.0


class ParamChannel:
    """Hands the learner's parameters to the actor, one version at a time (a queue of size 1)."""

    def __init__(self):
        self._queue: queue.Queue = queue.Queue(maxsize=1)

    def publish(self, version: int, model: torch.nn.Module, stop: threading.Event) -> None:
        """Copy ``model``'s parameters for the actor; blocks until the actor took the previous version."""
        snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
        _put(self._queue, (version, snapshot), stop)

    def take(self, stop: threading.Event) -> tuple[int, dict] | None:
        """The next published version (None if ``stop`` was set while waiting)."""
        return _get(self._queue, stop)


class Actor(threading.Thread):
    """Collects rollouts of ``rollout_length`` steps from ``env`` into ``rollouts`` until ``stop``."""

    def __init__(self, env: AtariVecEnv, model: ActorCritic, rollout_length: int, reward_clip: float,
                 rollouts: queue.Queue, params: ParamChannel, device: torch.device, initial_version: int, seed: int,
                 on_frames: Callable[[np.ndarray], None] | None = None, first_stream: int = 0):
        """``on_frames``: called with every step's frames [B, 4, 84, 84] before acting (the game
        detector, ``train/detection.py``); its time counts as acting time. ``first_stream``: the
        index of stream 0 among all ranks' streams (``train/distributed.py``)."""
        super().__init__(name="actor", daemon=True)
        self.env, self.model, self.T = env, model, rollout_length
        self.reward_clip = reward_clip
        self.rollouts, self.params, self.device = rollouts, params, device
        self.version = initial_version
        # One generator per stream, seeded by the stream's index among all ranks' streams, so that a
        # stream samples the same actions however the streams are split between ranks (and the
        # global torch RNG stays the learner's, saved in checkpoints).
        self.generators = [torch.Generator().manual_seed(seed + first_stream + b) for b in range(env.num_envs)]
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.on_frames = on_frames

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        try:
            # no_grad, not inference_mode: the learner uses these tensors in autograd.
            with torch.no_grad():
                self._loop()
        except BaseException as e:  # surfaced to the learner thread, which re-raises it
            self.error = e
            self.stop_event.set()

    def _loop(self) -> None:
        B, A = self.env.num_envs, self.env.num_actions
        step = self.env.reset()
        prev_action = np.zeros(B, dtype=np.int64)
        state = self.model.initial_state(B, self.device)
        current = self._act(step, prev_action, state)
        k = 0
        while not self.stop_event.is_set():
            if k >= 2:
                got = self.params.take(self.stop_event)
                if got is None:
                    return
                self.version, weights = got
                self.model.load_state_dict(weights)
            rollout, current = self._collect(current, B, A)
            if not _put(self.rollouts, rollout, self.stop_event):
                return
            k += 1

    def _act(self, step: EnvStep, prev_action: np.ndarray, state: State) -> dict:
        """Run the policy on one env step; returns the record of that step (state_in = before it)."""
        if self.on_frames is not None:
            self.on_frames(step.obs)
        inp = step_inputs(step, torch.from_numpy(prev_action), self.reward_clip, self.device)
        logits, _, state_out = self.model(inp, state)
        action = _sample(torch.softmax(logits[0], -1), self.generators)
        return {"step": step, "prev_action": prev_action, "state_in": state, "state_out": state_out,
                "logits": logits[0], "action": action}

    def _collect(self, current: dict, B: int, A: int) -> tuple[Rollout, dict]:
        T = self.T
        records = [current]
        env_time = act_time = 0.0
        episodes: list[tuple[float, int]] = []
        started = time.perf_counter()
        for _ in range(T):
            action = records[-1]["action"].cpu().numpy()
            t0 = time.perf_counter()
            step = self.env.step(action)
            t1 = time.perf_counter()
            prev = np.where(step.first, 0, action)
            records.append(self._act(step, prev, records[-1]["state_out"]))
            act_time += time.perf_counter() - t1
            env_time += t1 - t0
            episodes.extend(step.finished)

        def stack(key):
            return torch.from_numpy(np.stack([getattr(r["step"], key) for r in records]))

        rollout = Rollout(
            frames=stack("obs"), reward=stack("reward"), first=stack("first"),
            terminated=stack("terminated"), done=stack("terminated") | stack("truncated"),
            life_lost=stack("life_lost"),
            prev_action=torch.from_numpy(np.stack([r["prev_action"] for r in records])),
            action=torch.stack([r["action"] for r in records]).cpu(),
            behaviour_logits=torch.stack([r["logits"] for r in records]).cpu(),
            game_id=stack("game_id"), initial_state=tuple(s.clone() for s in current["state_in"]),
            allowed=None if step.allowed is None else stack("allowed"),
            episodes=episodes, param_version=self.version, env_time=env_time, act_time=act_time,
            started=started,
        )
        return rollout, records[-1]


class Sampler:
    """The sampling side of training (Sample Factory's split): an actor thread on its own copy of
    ``model``, the queue it ships rollouts through and the channel the learner publishes to it by.

    ``next()`` hands the learner the next rollout with the seconds it waited for it; ``publish``
    gives the actor the learner's new parameters (not after a segment's last update, which no
    rollout waits for); ``close`` stops the thread. The env is the caller's to close.
    """

    def __init__(self, env: AtariVecEnv, model: ActorCritic, rollout_length: int, reward_clip: float,
                 device: torch.device, initial_version: int, seed: int,
                 on_frames: Callable[[np.ndarray], None] | None = None, first_stream: int = 0):
        self.rollouts: queue.Queue = queue.Queue(maxsize=1)
        self.params = ParamChannel()
        self.actor = Actor(env, copy.deepcopy(model), rollout_length, reward_clip, self.rollouts, self.params,
                           device, initial_version, seed, on_frames, first_stream)

    def start(self) -> None:
        self.actor.start()

    def next(self) -> tuple[Rollout, float]:
        """The next rollout and the seconds spent waiting for it; re-raises the actor's error."""
        t0 = time.perf_counter()
        rollout = next_rollout(self.rollouts, self.actor)
        return rollout, time.perf_counter() - t0

    def publish(self, version: int, model: torch.nn.Module) -> None:
        self.params.publish(version, model, self.actor.stop_event)

    def close(self) -> None:
        """Stop the actor thread; RuntimeError if it does not stop within 30 s."""
        self.actor.stop()
        self.actor.join(timeout=30)
        if self.actor.is_alive():
            raise RuntimeError("actor thread did not stop within 30 s")


def next_rollout(rollouts: queue.Queue, actor: Actor) -> Rollout:
    """The next rollout from ``actor``; re-raises the actor's error if it died."""
    while True:
        try:
            return rollouts.get(timeout=1.0)
        except queue.Empty:
            if actor.error is not None:
                raise actor.error
            if not actor.is_alive():
                raise RuntimeError("actor thread stopped without an error")


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    """Blocking put that gives up (returns False) once ``stop`` is set."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event):
    """Blocking get that gives up (returns None) once ``stop`` is set."""
    while not stop.is_set():
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue
    return None


def _sample(probs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One action per stream from probs [B, A] by inverse CDF, stream b's uniform from ``generators[b]``."""
    u = torch.cat([torch.rand(1, generator=g) for g in generators]).to(probs.device, probs.dtype)
    action = torch.searchsorted(probs.cumsum(-1), u.unsqueeze(-1), right=True).squeeze(-1)
    return action.clamp(max=probs.shape[-1] - 1)  # u above a rounded-down last cdf entry
