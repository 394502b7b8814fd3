"""Every TensorBoard tag is named in train/tags.py, and docs/metrics.md is that reference."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from train import tags

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def test_docs_metrics_table_is_the_generated_reference():
    assert tags.reference_table() in DOCS.read_text()


def test_reference_patterns_match_concrete_tags_and_nothing_else():
    assert tags.known("charts/episodic_return/Breakout") and tags.known("cache/bytes/dram_to_hbm")
    assert tags.known("rank1/cache/hit_rate/hbm") and tags.known("eval/cache/stall_ms_per_step")
    assert not tags.known("charts/episodic_return/Breakout/extra")
    assert not tags.known("losses/unknown") and not tags.known("rank1/losses/total")


def test_every_tag_a_smoke_run_writes_is_in_the_reference(smoke_run):
    ea = EventAccumulator(str(smoke_run / "tb"))
    ea.Reload()
    written = ea.Tags()["scalars"] + ea.Tags()["images"]
    assert tags.LOSS_TOTAL in written and tags.eval_return("Pong") in written
    assert [t for t in written if not tags.known(t)] == []
