"""The expert store's manifest: which slab slot holds each expert's committed version, and its CRC-32C.

Versioned slots (a generalisation of A/B slots)
    Each expert owns ``slots_per_expert`` slots in every slab file (``storage/slab.py``). The
    manifest names one of them as the expert's *committed* slot; retained snapshots (the expert
    state that a training checkpoint refers to) may name others. A write-back always goes to a slot
    that neither the committed state nor any retained snapshot names (:meth:`Manifest.free_slot`),
    so a crash in the middle of a write can only tear a slot that nothing committed points to.
    With ``K`` retained snapshots, ``2 + K`` slots per expert always leave one free.
    Scratch kinds (``TensorSpec.scratch``) are outside all this: one slot per expert, no checksum here.

Commit protocol (``ExpertStore.flush``)
    write the new versions into free slots -> fsync every slab file -> write the commit being
    replaced to ``manifest.prev.json``, then the new one to ``manifest.json``, each with
    :func:`storage.atomic.atomic_write_text` (temp file, fsync, rename, fsync dir). Until the rename,
    the old manifest and the old slots are intact; after it, the new ones are on the disk.

Two copies (as LMDB's two meta pages)
    ``manifest.json`` holds the newest commit and ``manifest.prev.json`` the one before it, so one
    bad byte (or a torn or lost file) does not make the store unopenable: :meth:`Manifest.load`
    reads the newest copy that passes its checksum and says what a fallback lost (:attr:`Manifest.damage`).
    The previous commit's slots are not protected from later write-backs, so a fallback is verified
    like any open; an expert written back since then fails its CRC-32C and is named. (In training every
    commit is a checkpoint's snapshot and the two newest snapshots are retained, so there they are.)

File format (``manifest.json``)
    ``{"format": 1, "seq": commits so far, "num_experts", "slots_per_expert",
    "spec": {kind: {"shape", "dtype"}}, "experts": [[slot, version, {kind: CRC-32C}], ...],
    "snapshots": {tag: [[slot, version, {kind: CRC-32C}], ...]}, "snapshot_order": [tag, ...],
    "checksum": zlib crc32 of the canonical JSON of everything else}``.
    Format 2 (CRC-32C per kind, scratch kinds) replaced format 1 (zlib crc32, every kind durable).
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from storage.atomic import atomic_write_text
from storage.slab import RecordSpec, TensorSpec
from common.errors import UserError

MANIFEST = "manifest.json"
PREVIOUS = "manifest.prev.json"
"""The copy of the commit before the newest one (see "Two copies" above)."""
FORMAT = 2


@dataclass
class SlotRef:
    """Where one version of one expert lives, and how to check it."""

    slot: int
    """Slot index within the expert's own slots, ``0 <= slot < slots_per_expert``."""
    version: int
    """Write-back counter of this expert (0 = as created)."""
    crc: dict[str, int]
    """CRC-32C (``storage/slab.py``) of each durable kind's bytes (scratch kinds have none)."""

    def to_json(self) -> list:
        return [self.slot, self.version, self.crc]

    @staticmethod
    def from_json(x: list) -> "SlotRef":
        return SlotRef(int(x[0]), int(x[1]), {k: int(v) for k, v in x[2].items()})


@dataclass
class Manifest:
    """The committed state of an expert store (see the module docstring)."""

    spec: RecordSpec
    num_experts: int
    slots_per_expert: int
    experts: list[SlotRef]
    """Committed version of each expert, by expert id."""
    seq: int = 0
    """Number of commits so far."""
    snapshots: dict[str, list[SlotRef]] = field(default_factory=dict)
    """Retained snapshots: tag -> the committed state of every expert when it was taken."""
    snapshot_order: list[str] = field(default_factory=list)
    """Snapshot tags, oldest first."""
    damage: str | None = field(default=None, compare=False)
    """Set by :meth:`load` when the newest copy was damaged and this is the previous commit: what was lost."""

    def global_slot(self, expert: int, slot: int) -> int:
        """Index of an expert's ``slot`` in a durable kind's slab file."""
        return expert * self.slots_per_expert + slot

    @property
    def durable(self) -> list[str]:
        """The kinds kept with versioned slots and checksums (all but the scratch kinds)."""
        return [k for k, s in self.spec.items() if not s.scratch]

    def slab_slots(self, kind: str) -> int:
        """Slots in ``kind``'s slab file: ``slots_per_expert`` per expert, or one for a scratch kind."""
        return self.num_experts * (1 if self.spec[kind].scratch else self.slots_per_expert)

    def free_slot(self, expert: int, prefer: int | None = None) -> int:
        """A slot of ``expert`` that no committed or retained state names (``prefer`` if it is one)."""
        taken = {self.experts[expert].slot} | {refs[expert].slot for refs in self.snapshots.values()}
        if prefer is not None and prefer not in taken:
            return prefer
        for slot in range(self.slots_per_expert):
            if slot not in taken:
                return slot
        raise RuntimeError(f"expert {expert}: all {self.slots_per_expert} slots are referenced; "
                           f"too many snapshots ({len(self.snapshots)}) retained")

    def to_json(self) -> str:
        body = {
            "format": FORMAT,
            "seq": self.seq,
            "num_experts": self.num_experts,
            "slots_per_expert": self.slots_per_expert,
            "spec": {k: s.to_json() for k, s in self.spec.items()},
            "experts": [r.to_json() for r in self.experts],
            "snapshots": {t: [r.to_json() for r in refs] for t, refs in self.snapshots.items()},
            "snapshot_order": self.snapshot_order,
        }
        body["checksum"] = _checksum(body)
        return json.dumps(body)

    @staticmethod
    def from_json(text: str, where: Path) -> "Manifest":
        try:
            body = json.loads(text)
            checksum = body.pop("checksum")
        except (ValueError, KeyError, AttributeError, TypeError) as e:
            raise UserError(f"expert store manifest {where} is unreadable ({e}); restore the run from a backup") from e
        if checksum != _checksum(body):
            raise UserError(f"expert store manifest {where} fails its checksum; restore the run from a backup")
        if body.get("format") != FORMAT:
            raise UserError(f"expert store manifest {where} has format {body.get('format')}, expected {FORMAT} "
                            "(made by another version of this code); start the run afresh or use that version")
        return Manifest(
            spec={k: TensorSpec.from_json(s) for k, s in body["spec"].items()},
            num_experts=body["num_experts"],
            slots_per_expert=body["slots_per_expert"],
            experts=[SlotRef.from_json(x) for x in body["experts"]],
            seq=body["seq"],
            snapshots={t: [SlotRef.from_json(x) for x in refs] for t, refs in body["snapshots"].items()},
            snapshot_order=list(body["snapshot_order"]),
        )

    def save(self, directory: Path, previous: "Manifest | None") -> None:
        """Commit: keep ``previous`` (the commit this one replaces; None for a new store, which drops any
        old copy) as ``manifest.prev.json``, then atomically replace ``manifest.json``."""
        directory = Path(directory)
        if previous is None:
            (directory / PREVIOUS).unlink(missing_ok=True)
        else:
            atomic_write_text(directory / PREVIOUS, previous.to_json())
        atomic_write_text(directory / MANIFEST, self.to_json())

    @staticmethod
    def load(directory: Path) -> "Manifest":
        """The newest commit: ``manifest.json``, or when that is damaged or missing, ``manifest.prev.json``
        with :attr:`damage` saying what was lost. UserError when neither copy is readable."""
        directory = Path(directory)
        try:
            return _read(directory / MANIFEST)
        except UserError as newest:
            if not (directory / PREVIOUS).exists():
                raise
            try:
                manifest = _read(directory / PREVIOUS)
            except UserError:
                raise UserError(f"{newest}; its previous copy {directory / PREVIOUS} is damaged too") from None
            manifest.damage = (f"{directory / MANIFEST} is damaged or missing; opened the previous commit "
                               f"({manifest.seq}) from {PREVIOUS}: commit {manifest.seq + 1} (its write-backs "
                               "and snapshot) is lost")
            return manifest


def _read(path: Path) -> Manifest:
    """One manifest copy; UserError if it is missing, unreadable or damaged."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"no expert store in {path.parent} ({path.name} is missing)") from None
    except (OSError, UnicodeDecodeError) as e:  # a flipped byte can make it invalid UTF-8
        raise UserError(f"expert store manifest {path} is unreadable ({e}); restore the run from a backup") from None
    return Manifest.from_json(text, path)


def _checksum(body: dict) -> int:
    return zlib.crc32(json.dumps(body, sort_keys=True).encode())
