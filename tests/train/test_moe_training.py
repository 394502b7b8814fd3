"""The MoE core in real training runs (envpool Atari, smoke sizes): experts cycling through the
tiers of a real store (with detector prefetch), the same parameters as with every expert in hbm,
every cache, expert and detector figure in TensorBoard (training and evaluation) on a
--switch-every stress run, the cache dashboard (a Custom Scalars layout) read back from its event
files, ``charts/game`` stepping through the games, a SIGKILL + resume that rolls the store back to
the checkpoint (and keeps one dashboard), the MoE on the T-maze (no frames, no detector) trained,
evaluated, killed and resumed, and bad flags rejected with one line."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar.metadata import CONFIG_SUMMARY_TAG

from storage.checkpoint import CheckpointManager
from storage.expert_store import ExpertStore
from tests.conftest import run_cli, train_and_kill
from train import tags

# 3 evaluation streams x top-2 can route to 6 experts at one step: more than the small hbm holds.
MOE = ["--preset", "smoke", "--core", "moe", "--learning", "rtrl", "--num-experts", "6", "--top-k", "2", "--eval-every", "0",
       "--frames-per-game", "2560", "--episodes", "3", "--no-progress"]
# The small run also prefetches by the game detector: prefetching moves experts, never changes the math.
SMALL = ["--hbm-experts", "4", "--dram-experts", "5", "--prefetch", "detector"]
ALL = ["--hbm-experts", "6", "--dram-experts", "6"]


def _replica_matches_store(run_dir, experts: int = 6) -> dict:
    """The latest checkpoint's expert replica equals the store's snapshot of the same name; returns the state."""
    state = CheckpointManager(run_dir).load_latest()
    model = state["model"]
    store = ExpertStore.open(run_dir / "experts", experts, experts, snapshot=state["expert_snapshot"])  # verifies crc32s
    for e in range(experts):
        with store.use([e]) as (rec,):
            assert torch.equal(rec["F"], model["core.expert_F"][e]) and torch.equal(rec["Z"], model["core.expert_Z"][e])
    store.close()
    return state


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("moe")
    for name, tiers in (("small", SMALL), ("all", ALL)):
        run_cli("train", *MOE, *tiers, "--run-dir", str(base / name), check=True)
    return base / "small", base / "all"


def test_out_of_core_run_equals_the_all_in_hbm_run(runs):
    small, all_in_hbm = (_replica_matches_store(r) for r in runs)
    for key, value in all_in_hbm["model"].items():
        assert torch.allclose(small["model"][key].double(), value.double(), rtol=1e-6, atol=1e-7), key
    assert not torch.equal(small["model"]["core.expert_F"], _initial_experts(runs[0]))  # the experts learned


def _initial_experts(run_dir) -> torch.Tensor:
    return CheckpointManager(run_dir).load(run_dir / "checkpoints" / "stage_000.pt")["model"]["core.expert_F"]


# A --switch-every stress run: 3 games with their own cohorts (game routing) cycling every 1280
# frames through an hbm of 2 cohorts, so the detector's prefetches, evictions and reloads all happen.
SWITCH = ["--preset", "smoke", "--games", "Pong,Breakout,SpaceInvaders", "--core", "moe", "--learning", "rtrl",
          "--num-experts", "6", "--top-k", "2", "--routing", "game", "--hbm-experts", "4", "--dram-experts", "5",
          "--prefetch", "detector", "--frames-per-game", "3840", "--switch-every", "1280", "--eval-every", "0",
          "--no-progress"]
CACHE_TAGS = ["cache/hit_rate/hbm", "cache/hit_rate/dram", "cache/stall_ms_per_step",
              *(f"cache/prefetch/{x}" for x in ("precision", "coverage", "timeliness")),
              *(f"cache/bytes/{link}" for link in ("nvme_to_dram", "dram_to_hbm", "hbm_to_dram", "dram_to_nvme"))]
DETECTOR_TAGS = ["detector/accuracy", "detector/switch_latency_steps"]


@pytest.fixture(scope="module")
def switch_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("switch") / "run"
    run_cli("train", *SWITCH, "--run-dir", str(run_dir), check=True)
    return run_dir


def test_every_cache_and_detector_figure_reaches_tensorboard(switch_run):
    ea = EventAccumulator(str(switch_run / "tb"))
    ea.Reload()
    scalars = set(ea.Tags()["scalars"])
    expected = [*CACHE_TAGS, *DETECTOR_TAGS, "experts/nmi_game_expert", "experts/utilization_entropy",
                "experts/active", *(f"eval/{t}" for t in CACHE_TAGS), "eval/detector/accuracy"]
    for tag in expected:
        assert tag in scalars, tag
        values = [e.value for e in ea.Scalars(tag)]
        assert values and all(math.isfinite(v) for v in values), tag
        if any(x in tag for x in ("hit_rate", "prefetch/", "nmi", "entropy", "accuracy")):
            assert all(0.0 <= v <= 1.0 for v in values), tag
        if "bytes" in tag or "stall" in tag or "latency" in tag:
            assert all(v >= 0.0 for v in values), tag
    assert sum(e.value for e in ea.Scalars("cache/bytes/dram_to_nvme")) > 0  # experts went down to NVMe
    assert sum(e.value for e in ea.Scalars("eval/cache/bytes/dram_to_hbm")) > 0  # evaluation moved experts too
    # Once every game is known (the 3rd stage), the detector names each stream's game.
    assert [e.value for e in ea.Scalars("eval/detector/accuracy")][-1] >= 0.99
    assert "experts/usage" in ea.Tags()["images"]


def test_switch_every_cycles_the_games_inside_each_stage(switch_run):
    """Game routing counts each game's steps in its own row: after stage 1 of a 3-game run every game
    was trained (without --switch-every only the first would be), in equal shares."""
    usage = CheckpointManager(switch_run).load(switch_run / "checkpoints" / "stage_001.pt")["model"]["core.usage"]
    per_game = usage.sum(dim=1)
    assert (per_game > 0).all(), per_game
    # Decayed counts: the most recent game weighs most, but no game is far behind in a 3-visit stage.
    assert per_game.min() > 0.2 * per_game.max(), per_game


def _layout(run_dir) -> layout_pb2.Layout:
    """The Custom Scalars layout of a run, read back by tensorboard's EventAccumulator (as the
    plugin's own tag): exactly one, at step 0."""
    ea = EventAccumulator(str(run_dir / "tb"), size_guidance={"tensors": 0})
    ea.Reload()
    events = ea.Tensors(CONFIG_SUMMARY_TAG)
    assert [e.step for e in events] == [0]
    assert ea.SummaryMetadata(CONFIG_SUMMARY_TAG).plugin_data.plugin_name == "custom_scalars"
    layout = layout_pb2.Layout()
    layout.ParseFromString(events[0].tensor_proto.string_val[0])
    return layout


def _layouts_written(run_dir) -> int:
    """Layout summaries in all of a run's event files, purged or not (every write counts)."""
    return sum(v.tag == CONFIG_SUMMARY_TAG for path in sorted((run_dir / "tb").glob("events.out.tfevents.*"))
               for event in EventFileLoader(str(path)).Load() for v in event.summary.value)


def _logged(regex: str, scalars: set[str]) -> list[str]:
    """The logged scalar tags a layout expression shows: the plugin's own matching (``re.match``)."""
    return sorted(t for t in scalars if re.match(regex, t))


def test_the_cache_dashboard_is_in_the_event_files_and_names_only_logged_tags(switch_run):
    layout = _layout(switch_run)
    assert [c.title for c in layout.category] == ["expert cache: training", "expert cache: evaluations"]
    training, evaluation = ([ch.title for ch in c.chart] for c in layout.category)
    assert training == ["game being trained (charts/game)", "hit rate per tier (hbm, dram)",
                        "prefetch precision / coverage / timeliness", "stall ms per step (learner update)",
                        "bytes per link", "game detector accuracy"]
    assert evaluation == ["hit rate per tier (hbm, dram)", "prefetch precision / coverage / timeliness",
                          "stall ms per env step", "bytes per link", "game detector accuracy"]
    ea = EventAccumulator(str(switch_run / "tb"))
    ea.Reload()
    scalars = set(ea.Tags()["scalars"])
    charts, unmatched = {}, []
    for category in layout.category:
        for chart in category.chart:
            assert chart.WhichOneof("content") == "multiline", chart.title
            shown = [_logged(regex, scalars) for regex in chart.multiline.tag]
            unmatched += [(chart.title, regex) for regex, tags_shown in zip(chart.multiline.tag, shown) if not tags_shown]
            charts[(category.title, chart.title)] = sorted(sum(shown, []))
    assert unmatched == []  # every expression of the layout shows at least one tag the run wrote
    assert charts[("expert cache: training", "hit rate per tier (hbm, dram)")] == ["cache/hit_rate/dram",
                                                                                    "cache/hit_rate/hbm"]
    links = ["dram_to_hbm", "dram_to_nvme", "hbm_to_dram", "nvme_to_dram"]
    assert charts[("expert cache: training", "bytes per link")] == [f"cache/bytes/{link}" for link in links]
    assert charts[("expert cache: evaluations", "bytes per link")] == [f"eval/cache/bytes/{link}" for link in links]
    assert charts[("expert cache: training", "prefetch precision / coverage / timeliness")] == [
        "cache/prefetch/coverage", "cache/prefetch/precision", "cache/prefetch/timeliness"]
    # Negative controls: a made-up tag, a tier without a hit rate, and the training chart's expression
    # against the evaluations' and a rank's tags of the same figure match nothing.
    assert _logged("^cache/prefetch/recall$", scalars) == [] and _logged("^cache/hit_rate/nvme$", scalars) == []
    assert _logged("^cache/bytes/[^/]+$", {"eval/cache/bytes/dram_to_hbm", "rank1/cache/bytes/dram_to_hbm"}) == []


def test_charts_game_steps_through_the_games_at_every_switch(switch_run):
    """--switch-every 1280 over 3 x 3,840 frames: segment k trains run frames (1280 k, 1280 (k + 1)],
    game k mod 3 (Pong 0, Breakout 1, SpaceInvaders 2), and logs at least its last window."""
    ea = EventAccumulator(str(switch_run / "tb"), size_guidance={"scalars": 0})
    ea.Reload()
    points = [(e.step, e.value) for e in ea.Scalars("charts/game")]
    assert points and all(value == ((step - 1) // 1280) % 3 for step, value in points), points
    assert sorted({(step - 1) // 1280 for step, _ in points}) == list(range(9))
    changes = [value for i, (_, value) in enumerate(points) if i == 0 or value != points[i - 1][1]]
    assert changes == [0, 1, 2] * 3


@pytest.mark.slow  # 1.5-3 min; tests/train/test_chaos.py (slow too) kills a MoE run 30 times
def test_sigkill_then_resume_rolls_the_store_back_to_the_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    args = [*MOE, *SMALL, "--frames-per-game", "6400", "--checkpoint-every", "1000", "--run-dir", str(run_dir)]
    train_and_kill(args, run_dir, lambda frames: frames >= 2000)
    _replica_matches_store(run_dir)
    run_cli("train", *args, "--resume", check=True)
    state = _replica_matches_store(run_dir)
    assert state["progress"]["total_frames"] == 2 * 6400
    # The dashboard written at the start is kept by the resume's purge step, and not written again.
    assert len(list((run_dir / "tb").glob("events.out.tfevents.*"))) == 2
    assert _layouts_written(run_dir) == 1 and len(_layout(run_dir).category) == 2


# The T-maze has no frames, so a MoE run on it has no game detector (the default prefetch is lru):
# 4 experts, top-2 learned routing, through an hbm of 2 and a dram of 3; 8 updates of 320 frames
# (4 streams x 20 steps x frame skip 4), a checkpoint after every second.
TMAZE_FRAMES = 2560
TMAZE = ["--preset", "memory-rtrl", "--games", "tmaze-10", "--encoder", "mlp", "--core", "moe", "--routing", "learned",
         "--num-experts", "4", "--top-k", "2", "--hbm-experts", "2", "--dram-experts", "3", "--hidden-size", "16",
         "--num-envs", "4", "--frames-per-game", str(TMAZE_FRAMES), "--checkpoint-every", "640", "--episodes", "2",
         "--no-progress"]


def test_moe_on_the_tmaze_trains_evaluates_and_resumes_without_a_detector(tmp_path):
    """Killed mid-stage and resumed: the checkpoints hold no detector, the experts learned and match
    the store, both evaluations have a finite return, and the expert traffic of training and
    evaluation is in TensorBoard (no detector figures)."""
    run_dir = tmp_path / "run"
    args = [*TMAZE, "--run-dir", str(run_dir)]
    train_and_kill(args, run_dir, lambda frames: 640 <= frames < TMAZE_FRAMES)
    killed = CheckpointManager(run_dir).load_latest()
    assert killed["detector"] is None and 0 < killed["progress"]["total_frames"] < TMAZE_FRAMES
    proc = run_cli("train", *args, "--resume", check=True)
    assert "resuming from" in proc.stdout
    state = _replica_matches_store(run_dir, experts=4)
    assert state["detector"] is None and state["progress"]["total_frames"] == TMAZE_FRAMES
    assert not torch.equal(state["model"]["core.expert_F"], _initial_experts(run_dir))  # the experts learned
    returns = json.loads((run_dir / "eval" / "forgetting.json").read_text())["returns"]
    assert len(returns) == 2 and all(math.isfinite(r) for row in returns for r in row), returns  # before, stage 1
    ea = EventAccumulator(str(run_dir / "tb"))
    ea.Reload()
    scalars = ea.Tags()["scalars"]
    for tag in ("cache/hit_rate/hbm", "cache/stall_ms_per_step", "eval/cache/hit_rate/hbm", "eval/cache/bytes/dram_to_hbm"):
        assert tag in scalars and all(math.isfinite(e.value) for e in ea.Scalars(tag)), tag
    assert sum(e.value for e in ea.Scalars("cache/bytes/dram_to_nvme")) > 0  # 4 experts through a dram of 3
    assert not [t for t in scalars if "detector/" in t]
    # The cache dashboard, written once (the resume kept it), has no detector charts here.
    layout = _layout(run_dir)
    assert _layouts_written(run_dir) == 1
    charts = [(c.title, ch.title) for c in layout.category for ch in c.chart]
    assert len(charts) == 9 and not [t for t in charts if "detector" in t[1]], charts
    assert all(_logged(regex, set(scalars)) for c in layout.category for ch in c.chart for regex in ch.multiline.tag
               if "prefetch" not in ch.title)  # the lru cache issues no prefetches


# --optimizer adam with game routing: Pong trains experts 0, 1 and Breakout 2, 3 (4, 5 are never
# routed); 20 updates of 320 frames (4 streams x 20 steps x frame skip 4) per stage.
ADAM = [*MOE, *SMALL, "--optimizer", "adam", "--routing", "game", "--frames-per-game", "6400",
        "--checkpoint-every", "1000"]
UPDATE_FRAMES, STAGE_UPDATES = 320, 20
ADAM_STATE = ("m_F", "m_Z", "sq_F", "sq_Z", "step")


def _adam_records(run_dir, state: dict) -> list[dict[str, torch.Tensor]]:
    """Every expert's Adam state in the store snapshot of checkpoint ``state``."""
    store = ExpertStore.open(run_dir / "experts", 6, 6, snapshot=state["expert_snapshot"])
    records = []
    for e in range(6):
        with store.use([e]) as (rec,):
            records.append({k: rec[k].clone() for k in ADAM_STATE})
    store.close()
    return records


@pytest.mark.slow  # 1-2 min
def test_adam_experts_keep_their_moments_and_step_counts_across_a_sigkill_and_resume(tmp_path):
    """Killed in the second stage and resumed. Each update steps its game's experts once, so
    Breakout's experts end the run with one Adam step per update of stage 2 only if the resumed run
    continued from the checkpoint's step counts and moments (a fresh state would count from 0)."""
    run_dir = tmp_path / "run"
    args = [*ADAM, "--run-dir", str(run_dir)]
    train_and_kill(args, run_dir, lambda frames: frames > (STAGE_UPDATES + 2) * UPDATE_FRAMES)
    killed = _replica_matches_store(run_dir)
    assert all("exp_avg" in s for s in killed["learner"]["optimizer"]["state"].values())  # the dense Adam
    done = killed["progress"]["total_frames"] // UPDATE_FRAMES - STAGE_UPDATES  # stage-2 updates before the kill
    assert 2 <= done < STAGE_UPDATES
    before = _adam_records(run_dir, killed)
    counts = [int(r["step"]) for r in before]
    assert counts[2:] == [done, done, 0, 0] and min(counts[:2]) >= STAGE_UPDATES, counts
    for e, r in enumerate(before):
        assert all((r[k].abs().max() > 0) == (e < 4) for k in ADAM_STATE), e

    run_cli("train", *args, "--resume", check=True)
    final = _replica_matches_store(run_dir)
    assert final["progress"]["total_frames"] == 2 * STAGE_UPDATES * UPDATE_FRAMES
    after = _adam_records(run_dir, final)
    resumed = [int(r["step"]) for r in after]
    assert resumed[2:] == [STAGE_UPDATES, STAGE_UPDATES, 0, 0], resumed
    assert all(a >= b for a, b in zip(resumed[:2], counts[:2])), (counts, resumed)
    assert all(torch.equal(after[e][k], before[e][k]) for e in (4, 5) for k in ADAM_STATE)


@pytest.mark.parametrize("flags, message", [
    (["--top-k", "7"], "--top-k must be between 1 and --num-experts"),
    (["--top-k", "3", "--hbm-experts", "2", "--dram-experts", "3"], "--hbm-experts (2) must hold at least --top-k (3)"),
    (["--routing", "game", "--top-k", "4", "--hbm-experts", "4", "--dram-experts", "4"],
     "--routing game gives each of the 2 games its own 4 experts"),
    (["--learning", "tbptt"], "--core moe trains its experts by exact RTRL"),
    (["--hbm-experts", "3"], "--prefetch detector pins a game's cohort of at least --top-k (2) experts"),
    (["--core", "elstm", "--prefetch", "oracle"], "--prefetch oracle prefetches MoE experts: it needs --core moe"),
    (["--switch-every", "-5"], "--switch-every must be >= 0 frames"),
    (["--balance-cost", "-1"], "--balance-cost must be a finite number >= 0, got -1.0"),
    (["--switch-every", "100"], "--switch-every (100) must be at least one update's frames"),
    (["--routing", "learned", "--top-k", "1"], "--routing learned --top-k 1 would train the router by the balance loss alone"),
])
def test_bad_moe_flags_are_one_line_errors(tmp_path, flags, message):
    proc = run_cli("train", *MOE, *SMALL, *flags, "--run-dir", str(tmp_path / "r"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "r").exists()


def test_every_tag_a_moe_run_writes_is_in_the_reference(switch_run):
    ea = EventAccumulator(str(switch_run / "tb"))
    ea.Reload()
    written = ea.Tags()["scalars"] + ea.Tags()["images"]
    assert len(written) > 40
    assert [t for t in written if not tags.known(t)] == []


def test_resume_without_latest_keeps_the_experts_and_the_stage_checkpoints(runs, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs[0], run)
    (run / "checkpoints" / "latest").unlink()
    kept = {p: p.read_bytes() for p in [*(run / "checkpoints").glob("stage_*.pt"), *(run / "experts").glob("*.slab")]}
    proc = run_cli("train", *MOE, *SMALL, "--run-dir", str(run), "--resume", check=True)
    assert "resuming from" in proc.stdout and "latest" in proc.stderr
    assert {p: p.read_bytes() for p in kept} == kept
    state = CheckpointManager(run).load_resume().state
    ExpertStore.open(run / "experts", 6, 6, snapshot=state["expert_snapshot"]).close()  # verifies every expert
