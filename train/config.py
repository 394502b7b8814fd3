"""Configuration as data: one dataclass per concern, named presets, validation, JSON round trip.

The resolved config of a run is saved as ``<run_dir>/config.json``; a resumed run refuses a
different one unless ``--allow-config-change`` is given. Every field has a docstring (the CLI's
help text is taken from these strings, so the two never disagree).
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from agent.config import ModelConfig
from agent.encoders import ENCODERS, check_encoder
from common.errors import UserError
from common.fields import field_help
from common.memory import check_fits
from envs.atari import FRAME_SKIP, NUM_ACTIONS, OBS_SHAPE
from envs.config import EnvConfig
from envs.registry import min_episode_steps, observation_shape
from eval.config import EvalConfig
from storage.config import StoreConfig
from storage.slab import READ_PATHS


ADAM_BETAS = (0.9, 0.999)
"""``--optimizer adam``'s moment decay rates (torch's defaults), for the dense weights and the MoE experts."""
ADAM_EPS = 1e-5
"""``--optimizer adam``'s epsilon, added outside the square root (cleanrl's)."""


@dataclass
class LearnerConfig:
    rollout_length: int = 20
    """Steps T per rollout and learner update (IMPALA Atari: 20)."""
    discount: float = 0.99
    """Discount gamma per agent step."""
    learning_rate: float = 6e-4
    """Learning rate at the start of the run (after any warm-up); see --lr-schedule."""
    lr_schedule: str = "linear"
    """`linear`: the rate decays linearly to 0 over all stages (IMPALA, torchbeast); `constant`: it stays at --lr (every stage of a sequence then learns at the same rate)."""
    optimizer: str = "rmsprop"
    """`rmsprop` (torch's: the square average starts at 0, so the first updates move weights by up to 1/sqrt(1 - alpha) = 10x the rate), `rmsprop-tf` (TensorFlow's, which the IMPALA paper's code used: the square average starts at 1) or `adam` (torch's Adam: betas (0.9, 0.999), eps 1e-5). The MoE experts use the same optimizer as the dense weights, each keeping its state in the store (Adam: its own moments and step count). A resumed run cannot switch between Adam and RMSprop."""
    lr_warmup: int = 0
    """Learner updates over which the learning rate ramps linearly from 0 to --lr (0 = none)."""
    rmsprop_alpha: float = 0.99
    """RMSprop smoothing constant."""
    rmsprop_eps: float = 0.01
    """RMSprop epsilon, torch-style (added outside the square root), as in torchbeast."""
    rmsprop_momentum: float = 0.0
    """RMSprop momentum."""
    grad_norm_clip: float = 40.0
    """Global gradient-norm clip."""
    baseline_cost: float = 0.5
    """Weight of the value loss 0.5 * sum (v_s - V)^2."""
    entropy_cost: float = 0.01
    """Weight of the entropy bonus."""
    rho_bar: float = 1.0
    """V-trace importance-weight clip for the value targets."""
    c_bar: float = 1.0
    """V-trace trace-cutting clip."""
    pg_rho_bar: float = 1.0
    """V-trace importance-weight clip for the policy-gradient advantage."""
    loss_reduction: str = "sum"
    """`sum` over time and batch (IMPALA paper, torchbeast) or `mean`."""


@dataclass
class ScheduleConfig:
    frames_per_game: int = 400_000
    """Environment frames (agent steps x 4) trained per stage."""
    checkpoint_every: int = 200_000
    """Frames between periodic checkpoints (stage ends always checkpoint)."""
    log_every: float = 5.0
    """Seconds between TensorBoard scalar writes."""
    screen_every: int = 50
    """Learner updates between two measurements of how much the policy uses the screen (`policy/screen_kl`, train/screen_use.py; 0 = off)."""
    switch_every: int = 0
    """Stress schedule: every N frames training moves on to the next game of --games, cycling, inside every stage (0 = off: stage i trains game i only). Stages, checkpoints and evaluations stay where they are."""


@dataclass
class RunConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    """Environment settings."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Network settings."""
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    """Optimisation settings."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Stages, checkpoints and logging cadence."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation settings."""
    store: StoreConfig = field(default_factory=StoreConfig)
    """Tiered expert store (MoE core only)."""
    seed: int = 1
    """Seed of torch, numpy and the training envs."""
    device: str = "auto"
    """`auto` (cuda when present), `cpu` or `cuda`."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        try:
            return cls(
                env=EnvConfig(**data["env"]),
                model=ModelConfig(**data["model"]),
                learner=LearnerConfig(**data["learner"]),
                schedule=ScheduleConfig(**data["schedule"]),
                eval=EvalConfig(**data["eval"]),
                store=StoreConfig(**data.get("store", {})),
                seed=data["seed"],
                device=data["device"],
            )
        except (KeyError, TypeError) as e:
            raise UserError(f"config does not match this version of the code ({e}); start a new run dir") from e

    def frames_per_update(self) -> int:
        """Environment frames consumed by one learner update: T steps x B streams x frame skip."""
        return self.learner.rollout_length * self.env.num_envs * FRAME_SKIP

    def total_updates(self) -> int:
        """Learner updates in the whole run (a stage ends at the first update that reaches its frames)."""
        return len(self.env.games) * math.ceil(self.schedule.frames_per_game / self.frames_per_update())

    def has_frames(self) -> bool:
        """Whether every game of the schedule shows 4 x 84 x 84 frame stacks (Atari, the DMLab-style
        memory tasks), which is what the MoE run's game detector reads: a MoE run on other
        observations (the T-maze's) has no detector (``train/experts.py``)."""
        return all(observation_shape(g) == OBS_SHAPE for g in self.env.games)

    def env_seed(self, total_frames: int) -> int:
        """Seed of the training envs started at ``total_frames`` (new streams on every stage and resume)."""
        return self.seed * 1_000_003 + total_frames

    def validate(self) -> None:
        """Raise UserError on impossible settings (checked before anything is created)."""
        positive = {
            "--num-envs": self.env.num_envs,
            "--frames-per-game": self.schedule.frames_per_game,
            "--rollout-length": self.learner.rollout_length,
            "--hidden-size": self.model.hidden_size,
            "--episodes": self.eval.episodes,
            "--checkpoint-every": self.schedule.checkpoint_every,
            "--max-episode-steps": self.env.max_episode_steps,
        }
        for flag, value in positive.items():
            if value <= 0:
                raise UserError(f"{flag} must be positive, got {value}")
        if not (math.isfinite(self.learner.learning_rate) and self.learner.learning_rate > 0):
            raise UserError(f"--lr must be a finite positive number, got {self.learner.learning_rate}")
        for flag, value in {"--log-every": self.schedule.log_every, "--entropy-cost": self.learner.entropy_cost,
                            "--balance-cost": self.model.balance_cost}.items():
            if not (math.isfinite(value) and value >= 0):
                raise UserError(f"{flag} must be a finite number >= 0, got {value}")
        if self.schedule.screen_every < 0:
            raise UserError(f"--screen-every must be >= 0 updates (0 = off), got {self.schedule.screen_every}")
        if self.schedule.switch_every < 0:
            raise UserError(f"--switch-every must be >= 0 frames (0 = off), got {self.schedule.switch_every}")
        if 0 < self.schedule.switch_every < self.frames_per_update():
            raise UserError(f"--switch-every ({self.schedule.switch_every}) must be at least one update's frames "
                            f"(rollout length x num envs x 4 = {self.frames_per_update()})")
        if self.learner.lr_warmup < 0:
            raise UserError(f"--lr-warmup must be >= 0 updates (0 = off), got {self.learner.lr_warmup}")
        if not (math.isfinite(self.model.chrono_max) and (self.model.chrono_max == 0 or self.model.chrono_max > 2)):
            raise UserError(f"--chrono-max must be 0 (off) or a number of steps > 2, got {self.model.chrono_max}")
        if self.model.unroll < 0:
            raise UserError(f"--unroll must be >= 0 (0 = whole rollout), got {self.model.unroll}")
        if not self.env.games:
            raise UserError("--games is empty; give at least one game, e.g. --games Pong,Breakout")
        choices = {
            "--env-backend": (self.env.backend, ("envpool", "gymnasium")),
            "--encoder": (self.model.encoder, ENCODERS),
            "--core": (self.model.core, ("lstm", "elstm", "moe")),
            "--routing": (self.model.routing, ("learned", "game")),
            "--learning": (self.model.learning, ("tbptt", "rtrl")),
            "--rtrl-form": (self.model.rtrl_form, ("segment", "step")),
            "--device": (self.device, ("auto", "cpu", "cuda")),
            "loss_reduction": (self.learner.loss_reduction, ("sum", "mean")),
            "--action-set": (self.env.action_set, ("full", "minimal")),
            "--init": (self.model.init, ("torch", "orthogonal")),
            "--optimizer": (self.learner.optimizer, ("rmsprop", "rmsprop-tf", "adam")),
            "--lr-schedule": (self.learner.lr_schedule, ("linear", "constant")),
            "--read-path": (self.store.read_path, READ_PATHS),
        }
        for flag, (value, allowed) in choices.items():
            if value not in allowed:
                raise UserError(f"{flag} {value!r} is not supported; choose one of {', '.join(allowed)}")
        if self.model.learning == "rtrl" and self.model.core == "lstm":
            raise UserError("--learning rtrl needs --core elstm: exact RTRL for a fully recurrent LSTM keeps an "
                            "N x N x P sensitivity (O(N^4) time per step), which is not tractable")
        if self.model.learning == "rtrl" and self.model.unroll:
            raise UserError("--unroll applies to --learning tbptt only; RTRL's gradient is never truncated")
        if not 0.0 <= self.env.sticky_action_prob < 1.0:
            raise UserError(f"--sticky-action-prob must be in [0, 1), got {self.env.sticky_action_prob}")
        if self.store.io_depth < 1:
            raise UserError(f"--io-depth must be >= 1 read in flight, got {self.store.io_depth}")
        if self.store.prefetch not in ("none", "lru", "detector", "oracle"):
            raise UserError(f"--prefetch {self.store.prefetch!r} is not supported; choose one of none, lru, detector, oracle")
        if self.store.prefetch in ("detector", "oracle") and self.model.core != "moe":
            raise UserError(f"--prefetch {self.store.prefetch} prefetches MoE experts: it needs --core moe")
        if self.model.core == "moe":
            self._validate_moe()
        self._validate_observations()
        self._check_memory()

    def _validate_observations(self) -> None:
        """The encoder must read every game's observations, and the game detector (``--prefetch
        detector``) frames; the episode cap must leave every game solvable."""
        shape = check_encoder(self.model.encoder, self.env.games)
        if self.store.prefetch == "detector" and shape != OBS_SHAPE:  # --core moe, checked above
            raise UserError(f"--prefetch detector needs the game detector, which reads 4 x 84 x 84 frames; "
                            f"{self.env.games[0]} has none (a MoE run on it has no detector): use --prefetch oracle "
                            "(the schedule's game), lru or none")
        for game in self.env.games:
            need = min_episode_steps(game)
            if self.env.max_episode_steps < need:
                raise UserError(f"{game}'s episode is {need} steps; --max-episode-steps {self.env.max_episode_steps} "
                                f"would cut it before its end: raise it to at least {need}")

    def _check_memory(self) -> None:
        """Refuse sizes whose memory, estimated from below before anything is allocated, exceeds the
        machine's (an impossible --num-envs, --rollout-length, --hidden-size or --num-experts)."""
        m, B, T = self.model, self.env.num_envs, self.learner.rollout_length
        D = m.hidden_size + 1 + NUM_ACTIONS  # the core's input: features, reward, previous action
        experts = m.num_experts if m.core == "moe" else 1
        float_bytes = 4
        estimate = {
            "rollout frames": B * (T + 1) * math.prod(OBS_SHAPE),  # uint8
            "core weights": 2 * m.hidden_size * D * experts * float_bytes,  # at least two N x D per expert
        }
        if m.learning == "rtrl":  # two B x N x D sensitivities per expert in memory
            resident = self.store.hbm_experts + self.store.dram_experts if m.core == "moe" else 1
            estimate["RTRL sensitivities"] = 2 * B * m.hidden_size * D * resident * float_bytes
        sizes = (f"--num-envs {B}, --rollout-length {T}, --hidden-size {m.hidden_size}"
                 + (f", --num-experts {m.num_experts}" if m.core == "moe" else ""))
        check_fits(estimate, sizes)

    def _validate_moe(self) -> None:
        m, st = self.model, self.store
        if m.learning != "rtrl":
            raise UserError("--core moe trains its experts by exact RTRL: use --learning rtrl (TBPTT is for lstm/elstm)")
        if not 0 < m.top_k <= m.num_experts:
            raise UserError(f"--top-k must be between 1 and --num-experts ({m.num_experts}), got {m.top_k}")
        if m.routing == "learned" and m.top_k == 1:
            raise UserError("--routing learned --top-k 1 would train the router by the balance loss alone: the gate "
                            "of a single expert is a softmax over one logit, constant, so the task loss gives the "
                            "router no gradient; use --top-k 2 or more, or --routing game")
        if st.hbm_experts < m.top_k:
            raise UserError(f"--hbm-experts ({st.hbm_experts}) must hold at least --top-k ({m.top_k}) experts")
        if not st.hbm_experts <= st.dram_experts <= m.num_experts:
            raise UserError(f"expert tiers must satisfy --top-k <= --hbm-experts <= --dram-experts <= --num-experts; "
                            f"got {st.hbm_experts}, {st.dram_experts}, {m.num_experts}")
        games = len(dict.fromkeys(self.env.games))
        if m.routing == "game" and m.top_k * games > m.num_experts:
            raise UserError(f"--routing game gives each of the {games} games its own {m.top_k} experts: "
                            f"needs --num-experts >= {m.top_k * games}, got {m.num_experts}")
        if st.io_threads < 1:
            raise UserError(f"store io_threads must be >= 1, got {st.io_threads}")
        if st.prefetch in ("detector", "oracle") and st.hbm_experts < 2 * m.top_k:
            raise UserError(f"--prefetch {st.prefetch} pins a game's cohort of at least --top-k ({m.top_k}) experts next "
                            f"to the ones in use: needs --hbm-experts >= {2 * m.top_k}, got {st.hbm_experts}")


def _preset_default() -> RunConfig:
    """`make run`, the full system in 8-9 minutes on a 2-core CPU: the dataclass defaults. Three
    Atari games in sequence, the MoE eLSTM trained by exact RTRL, its experts in the tiered store
    with an hbm of two cohorts (so every stage and every evaluation moves experts between the
    tiers), detector prefetch, and the forgetting evaluation. Game routing gives each game its own
    cohort of --top-k experts; the learned router's per-game balance loss spreads a game over every
    expert, which an hbm smaller than --num-experts cannot cache."""
    return RunConfig()


def _dense(cfg: RunConfig, core: str = "lstm", learning: str = "tbptt") -> RunConfig:
    """``cfg`` with a dense core (no experts: the store's cohort prefetch does not apply)."""
    cfg.model.core, cfg.model.learning = core, learning
    cfg.store.prefetch = "lru"
    return cfg


def _preset_smoke() -> RunConfig:
    """A few thousand frames per game with the LSTM: checks the whole pipeline in well under a minute."""
    cfg = _dense(RunConfig())
    cfg.env.games = ["Pong", "Breakout"]
    cfg.env.num_envs = 4
    cfg.env.max_episode_steps = 200  # so that even Pong finishes episodes in a few thousand frames
    cfg.model.hidden_size = 64
    cfg.model.routing = "learned"  # with --core moe: the learned router, whose traffic the smoke tests exercise
    cfg.schedule.frames_per_game = 4_000
    cfg.schedule.checkpoint_every = 2_000
    cfg.schedule.log_every = 0.5
    cfg.eval.episodes = 1
    cfg.eval.every = 2_000
    return cfg


def _preset_cpu() -> RunConfig:
    """Three Atari games in sequence in about an hour on 2 CPU cores, learning visible on each: the dense
    LSTM with the training signal chosen by measurement (docs/results.md, "The cpu preset"): the
    minimal action set, a lost life ends the value bootstrap, no sticky actions in training (every
    evaluation keeps them), Adam at a constant 3e-4, cleanrl's orthogonal initialisation, 8 streams."""
    cfg = _dense(RunConfig())
    cfg.env.games = list(CPU_GAMES)
    cfg.env.num_envs = 8
    cfg.env.action_set = "minimal"
    cfg.env.life_loss = True
    cfg.env.sticky_action_prob = 0.0
    cfg.model.init = "orthogonal"
    cfg.learner.optimizer = "adam"
    cfg.learner.learning_rate = 3e-4  # 6e-4 learned faster, then killed the encoder's FC units at 1M frames
    cfg.learner.lr_schedule = "constant"
    cfg.schedule.frames_per_game = 2_500_000
    cfg.schedule.checkpoint_every = 500_000
    # Mid-stage and stage end: an evaluation of the 3 games (8 episodes each) took 230-300 s on the
    # shared machine, as long as 500k frames of training.
    cfg.eval.every = 1_250_000
    cfg.eval.episodes = 8
    return cfg


CPU_GAMES = ("Breakout", "Krull", "Seaquest")
"""The cpu preset's games, which look different (the detector has something to detect), chosen by
screens on 2 cores (docs/results.md): each learned within its first 1M frames (Krull at once,
Seaquest 110 -> 408). DemonAttack, the first choice for the third, stayed within its noise over a
whole 2.5M-frame stage."""


def _preset_cpu_machado() -> RunConfig:
    """The cpu preset under Machado et al. (2018)'s training protocol: sticky actions 0.25, the full
    18-action set and no life-loss signal."""
    cfg = _preset_cpu()
    cfg.env.action_set, cfg.env.life_loss, cfg.env.sticky_action_prob = "full", False, 0.25
    return cfg


def _preset_impala() -> RunConfig:
    """The IMPALA paper's Atari network (deep ResNet) and a longer schedule: for GPUs."""
    cfg = _dense(RunConfig())
    cfg.env.games = ["Pong", "Breakout", "SpaceInvaders"]
    cfg.env.num_envs = 32
    cfg.model.encoder = "resnet"
    cfg.schedule.frames_per_game = 20_000_000
    cfg.schedule.checkpoint_every = 2_000_000
    cfg.eval.episodes = 10
    cfg.eval.every = 2_000_000
    return cfg


def _preset_memory_rtrl() -> RunConfig:
    """Irie et al. (ICLR 2024, Table 1) at CPU scale: the eLSTM trained by exact RTRL on `watermaze`."""
    cfg = _dense(RunConfig(), core="elstm", learning="rtrl")
    cfg.env.games = ["watermaze"]
    cfg.env.num_envs = 8
    cfg.model.hidden_size = 128
    # Sparse rewards (a random agent finds the platform about every 400 steps): a higher rate and a
    # smaller entropy bonus than the Atari defaults, or the policy stays near uniform for the budget.
    cfg.learner.learning_rate = 2e-3
    cfg.learner.entropy_cost = 0.003
    cfg.schedule.frames_per_game = 800_000
    cfg.schedule.checkpoint_every = 400_000
    cfg.eval.episodes = 4
    cfg.eval.every = 0
    return cfg


def _preset_memory_tbptt() -> RunConfig:
    """`memory-rtrl`'s baseline: the same eLSTM trained by truncated BPTT with M = 10 (Irie et al.'s TBPTT)."""
    cfg = _preset_memory_rtrl()
    cfg.model.learning = "tbptt"
    cfg.model.unroll = 10
    return cfg


def _preset_tmaze() -> RunConfig:
    """The delayed-cue T-maze sweep (issue 16): `memory-rtrl`'s eLSTM by exact RTRL on `tmaze-100` with
    the `mlp` encoder and 32 envs, its settings chosen by measurement (docs/results.md, "The T-maze
    with a per-step action mask"): the chrono init (a forget gate of 0.5 forgets the cue in about 2
    steps), Adam decaying linearly (RMSprop did not learn; at a constant rate a learned policy
    collapsed), and no gradient-norm clip in effect (the clip of 40 stopped the credit RTRL carries
    across rollouts). The truncated baselines are flags on it: ``--learning tbptt --unroll 10`` and
    ``--core lstm --learning tbptt``."""
    cfg = _preset_memory_rtrl()
    cfg.env.games = ["tmaze-100"]
    cfg.env.num_envs = 32
    cfg.model.encoder = "mlp"
    cfg.model.chrono_max = 300.0
    cfg.learner.optimizer = "adam"
    cfg.learner.grad_norm_clip = 1e6
    cfg.schedule.frames_per_game = 10_000_000
    cfg.schedule.checkpoint_every = 5_000_000
    cfg.eval.episodes = 100
    cfg.eval.every = 2_500_000
    return cfg


PRESETS = {"default": _preset_default, "smoke": _preset_smoke, "cpu": _preset_cpu, "cpu-machado": _preset_cpu_machado,
           "impala": _preset_impala,
           "memory-rtrl": _preset_memory_rtrl, "memory-tbptt": _preset_memory_tbptt, "tmaze": _preset_tmaze}


def preset(name: str) -> RunConfig:
    """A fresh copy of the named preset."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()


SECTIONS = ("env", "model", "learner", "schedule", "eval", "store")
"""The config's sections, each a dataclass of its package's settings."""

FLAG_NAMES = {
    "env.backend": "--env-backend", "env.num_threads": "--env-threads", "learner.learning_rate": "--lr",
    "eval.episodes": "--episodes", "eval.every": "--eval-every", "eval.greedy": "--eval-greedy",
    "eval.seed": "--eval-seed", "eval.sticky_action_prob": "--eval-sticky-action-prob", "store.io_threads": "--io-threads",
}
"""Flags whose name is not the field's own (``--<field-name>``): short or unambiguous names."""


@dataclass(frozen=True)
class ConfigFlag:
    """One `run.py train` flag: it sets the config field ``key`` (``section.name``, or ``name`` at the top)."""

    flag: str
    key: str
    kind: Any
    """``int``, ``float``, ``str``, ``bool`` or ``list[str]``."""
    help: str


def config_flags() -> list[ConfigFlag]:
    """A flag for every field of :class:`RunConfig`, its help the field's docstring."""
    flags = []
    for section in SECTIONS + (None,):
        cls = RunConfig if section is None else type(getattr(RunConfig(), section))
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if section is None and f.name in SECTIONS:
                continue
            key = f.name if section is None else f"{section}.{f.name}"
            flag = FLAG_NAMES.get(key, "--" + f.name.replace("_", "-"))
            flags.append(ConfigFlag(flag, key, hints[f.name], field_help(cls, f.name)))
    return flags


def set_field(cfg: RunConfig, key: str, value: Any) -> None:
    """Set the field ``key`` (``section.name`` or ``name``) of ``cfg``."""
    *section, name = key.split(".")
    setattr(getattr(cfg, section[0]) if section else cfg, name, value)


def get_field(cfg: RunConfig, key: str) -> Any:
    """The field ``key`` (``section.name`` or ``name``) of ``cfg``."""
    *section, name = key.split(".")
    return getattr(getattr(cfg, section[0]) if section else cfg, name)


def reconcile(cfg: RunConfig, chosen: set[str]) -> list[str]:
    """Drop the preset's values that the user's flags (the field keys in ``chosen``) contradict.

    A preset is one valid config; a flag the user chose may need other fields to follow it (with
    the default preset, `--core lstm` needs `--learning tbptt` and no cohort prefetch). Each field
    the user did not choose is moved to the value the choice needs; a field the user did choose is
    never changed (if it contradicts another choice, validation says so). Returns one line per
    dropped value, ``key: old -> new (why)``, for the console.
    """
    dropped: list[str] = []

    def follow(key: str, value: Any, why: str) -> None:
        old = get_field(cfg, key)
        if key not in chosen and old != value:
            set_field(cfg, key, value)
            dropped.append(f"{key}: {old!r} -> {value!r} ({why})")

    m, st = cfg.model, cfg.store
    if m.core == "lstm" and m.learning == "rtrl":
        follow("model.learning", "tbptt", "the LSTM learns by truncated BPTT")
    if m.core == "moe" and m.learning == "tbptt":
        follow("model.learning", "rtrl", "the MoE core learns by RTRL")
    if m.learning == "rtrl" and m.unroll:
        follow("model.unroll", 0, "RTRL never truncates")
    if m.core != "moe":
        if st.prefetch in ("detector", "oracle"):
            follow("store.prefetch", "lru", "cohort prefetch needs --core moe")
        return dropped
    if st.prefetch == "detector" and not cfg.has_frames():
        follow("store.prefetch", "lru", f"the game detector reads 84 x 84 frames; {cfg.env.games[0]} has none")
    if m.routing == "game":
        games = len(dict.fromkeys(cfg.env.games))
        if m.top_k * games > m.num_experts:
            follow("model.num_experts", m.top_k * games, f"game routing gives each of {games} games {m.top_k} experts")
    cohort = 2 * m.top_k if st.prefetch in ("detector", "oracle") else m.top_k
    if st.hbm_experts < cohort:
        follow("store.hbm_experts", cohort, "hbm holds the experts in use and a prefetched cohort")
    if st.hbm_experts > m.num_experts:
        follow("store.hbm_experts", m.num_experts, "no more than --num-experts")
    if st.dram_experts < st.hbm_experts:
        follow("store.dram_experts", st.hbm_experts, "dram holds at least what hbm holds")
    if st.dram_experts > m.num_experts:
        follow("store.dram_experts", m.num_experts, "no more than --num-experts")
    return dropped
