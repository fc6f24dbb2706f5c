"""TensorBoard scalars from the server, when the `tensorboard` extra is installed (`pip install .[tensorboard]`).

Without the package nothing is written and the run says so once (in the log and in summary.json), rather
than failing a training job over a viewer.
"""

from __future__ import annotations

from pathlib import Path


class Scalars:
    def __init__(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self._writer = None
            self.status = "not installed (pip install .[tensorboard]); no scalars written"
            return
        self._writer = SummaryWriter(str(log_dir))
        self.status = f"scalars in {log_dir}"

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def add(self, values: dict[str, float | None], step: int) -> None:
        if self._writer is None:
            return
        for tag, value in values.items():
            if value is not None:
                self._writer.add_scalar(tag, value, step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
