"""TensorBoard logging: a writer whose step is the run's total environment frames.

Curves of a resumed run continue where they left off: the writer is opened with ``purge_step``
at the checkpoint's frame count, which drops anything a killed run wrote after its last
checkpoint. Scalars from the learner are averaged over the updates since the previous write
(every ``log_every`` seconds); episode returns are logged one point per episode. The tag names
are ``train/tags.py``'s.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from common.errors import UserError

class Logger:
    """A TensorBoard writer under ``<run_dir>/tb``; step = total frames."""

    def __init__(self, tb_dir: Path, purge_step: int | None = None, enabled: bool = True):
        """``enabled=False`` (the ranks other than 0 of a distributed run) writes nothing."""
        self._writer = None
        if not enabled:
            return
        try:
            self._writer = SummaryWriter(log_dir=str(tb_dir), purge_step=purge_step)
        except OSError as e:
            raise UserError(f"cannot write TensorBoard logs to {tb_dir}: {e.strerror}") from None

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self._writer is not None:
            for tag, value in values.items():
                self._writer.add_scalar(tag, value, step)

    def png(self, tag: str, data: bytes, step: int) -> None:
        """Log a PNG image (e.g. a plot already written to the run dir) under ``tag``."""
        import io

        from matplotlib.image import imread

        if self._writer is not None:
            self._writer.add_image(tag, imread(io.BytesIO(data), format="png"), step, dataformats="HWC")

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
