"""TensorBoard logging: a writer whose step is the run's total environment frames.

Curves of a resumed run continue where they left off: the writer is opened with ``purge_step``,
which drops anything a killed run wrote at or after that step. ``train/loop.py`` flushes the writer
before every checkpoint, so what was logged up to a checkpoint is in the files when the checkpoint
is, and chooses the purge step: the checkpoint's frame count F + 1 (what a killed attempt logged
after it is dropped), or F itself when the checkpoint precedes an evaluation at F (``stage_000``, a
stage end's ``stage_<i>``): the killed attempt may have logged that evaluation, and the resumed run
takes it again. The scalars logged at F before that checkpoint (the stage's last training window)
are then written again from the checkpoint (:meth:`Logger.tail`, :meth:`Logger.replay`), so the
frame axis has no gap and no step twice. Scalars from the learner are averaged over the updates
since the previous write (every ``log_every`` seconds); episode returns are logged one point per
episode. A MoE run also writes the Custom Scalars layout of the expert cache
(``train.tags.cache_dashboard``) once, at step 0. The tag names are ``train/tags.py``'s.
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
        self._tail_step = -1
        self._tail: dict[str, float] = {}
        """The scalars logged at the highest step so far (``_tail_step``)."""
        if not enabled:
            return
        try:
            self._writer = SummaryWriter(log_dir=str(tb_dir), purge_step=purge_step)
        except OSError as e:
            raise UserError(f"cannot write TensorBoard logs to {tb_dir}: {e.strerror}") from None

    def scalars(self, values: dict[str, float], step: int) -> None:
        if step > self._tail_step:
            self._tail_step, self._tail = step, {}
        if step == self._tail_step:
            self._tail.update({tag: float(v) for tag, v in values.items()})
        if self._writer is not None:
            for tag, value in values.items():
                self._writer.add_scalar(tag, value, step)

    def tail(self) -> dict:
        """``{"step", "scalars"}``: the scalars logged at the highest step so far (plain data, for a checkpoint)."""
        return {"step": self._tail_step, "scalars": dict(self._tail)}

    def replay(self, tail: dict | None, step: int) -> None:
        """Log again the scalars of ``tail`` (a :meth:`tail` saved in a checkpoint) if it is at ``step``."""
        if tail is not None and tail["step"] == step and tail["scalars"]:
            self.scalars(tail["scalars"], step)

    def custom_scalars(self, layout: dict) -> None:
        """Write a Custom Scalars layout (``SummaryWriter.add_custom_scalars``'s form, e.g.
        ``train.tags.cache_dashboard()``): a one-off summary at step 0, so write it only when the
        writer was opened with purge step 0 (a new run, or a restart that drops everything): a
        later purge step keeps the one already written."""
        if self._writer is not None:
            self._writer.add_custom_scalars(layout)

    def png(self, tag: str, data: bytes, step: int) -> None:
        """Log a PNG image (e.g. a plot already written to the run dir) under ``tag``."""
        import io

        from matplotlib.image import imread

        if self._writer is not None:
            self._writer.add_image(tag, imread(io.BytesIO(data), format="png"), step, dataformats="HWC")

    def flush(self) -> None:
        """Hand everything logged so far to the file (what a SIGKILL afterwards cannot lose)."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
