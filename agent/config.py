"""The network settings of a run (``RunConfig.model``)."""

from __future__ import annotations

from dataclasses import dataclass

@dataclass
class ModelConfig:
    encoder: str = "nature"
    """Observation encoder: `nature` (Nature DQN CNN, the CPU default) or `resnet` (IMPALA deep ResNet 16/32/32) for 84x84 frames; `mlp` (flatten, two Linear-ReLU layers) for small observations (the T-maze, `tmaze-D`)."""
    core: str = "moe"
    """Recurrent core: `lstm` (baseline, truncated BPTT only), `elstm` (element-wise LSTM: truncated BPTT or exact RTRL) or `moe` (Mixture-of-Experts eLSTM, exact lazy RTRL, experts in the tiered store)."""
    hidden_size: int = 256
    """Width of the encoder output and of the recurrent core."""
    learning: str = "rtrl"
    """How the core's recurrent weights learn: `tbptt` (backprop through the rollout, cut every --unroll steps) or `rtrl` (exact, untruncated real-time recurrent learning; eLSTM only)."""
    chrono_max: float = 0.0
    """Forget-gate bias init of every core, in steps: 0 = the default (eLSTM/MoE zeros, forget gate 0.5, a memory of about 2 steps at the start; LSTM PyTorch's); T > 2 = chrono init (Tallec & Ollivier 2018), time constants spread over 2..T steps, for tasks whose memory spans tens to thousands of steps (the T-maze)."""
    unroll: int = 0
    """Truncation length M for `tbptt` in steps (0 = the whole rollout); RTRL never truncates."""
    rtrl_form: str = "segment"
    """RTRL implementation: `segment` (BPTT in the rollout + carried sensitivities; fast) or `step` (per-step sensitivity update; the reference)."""
    num_experts: int = 8
    """MoE core: number of experts (the eLSTM's input projections F_e, Z_e)."""
    top_k: int = 2
    """MoE core: experts each step of each stream is routed to."""
    routing: str = "game"
    """MoE core: `learned` (top-k router on the core input, trained with a per-game balance loss) or `game` (hard routing by the schedule's game: the baseline)."""
    balance_cost: float = 0.01
    """MoE core: weight of the router's per-game load-balancing loss (per step, summed like the V-trace losses)."""
    init: str = "torch"
    """Weight initialisation of encoder and heads: `torch` (PyTorch's defaults) or `orthogonal` (cleanrl's: gain sqrt 2 in the encoder, 0.01 policy, 1 value, zero biases)."""
    lazy: bool = True
    """MoE core: lazy sensitivity updates of idle experts (cost grows with the active experts); False = eager (every expert every rollout; for comparison)."""
