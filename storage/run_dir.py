"""The run directory's layout: where a run keeps its config, logs, checkpoints, experts and evaluation.

    <run_dir>/config.json      the resolved config (written once, atomically)
    <run_dir>/tb/              TensorBoard event files
    <run_dir>/checkpoints/     atomic checkpoints and the `latest` pointer
    <run_dir>/experts/         the NVMe tier of the expert store (MoE cores)
    <run_dir>/eval/            forgetting.json, .csv, .png; curves.csv, .png
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import UserError


NAME_MAX = 255
"""The longest file name (path component) in bytes that Linux file systems take."""


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __post_init__(self) -> None:
        """A path component longer than any file system takes is refused here, before anything looks at it
        (``Path.exists`` would raise ENAMETOOLONG)."""
        for part in Path(self.root).parts:
            if len(os.fsencode(part)) > NAME_MAX:
                raise UserError(f"run dir {str(self.root)[:60]}...: the name {part[:20]}... has "
                                f"{len(os.fsencode(part))} bytes, more than the {NAME_MAX} a file system takes")

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def tb(self) -> Path:
        return self.root / "tb"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def experts(self) -> Path:
        return self.root / "experts"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    def exists(self) -> bool:
        return self.config.exists()

    def read_config_json(self) -> dict[str, Any]:
        """The saved config as the JSON document; UserError if it is missing or unreadable."""
        try:
            return json.loads(self.config.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{self.root} is not a run directory (no config.json)") from None
        except (OSError, ValueError) as e:  # ValueError: not UTF-8, or not JSON
            raise UserError(f"cannot read {self.config}: {e}") from None
