"""Lightning's console output, once per line and without advertisements: what every task that runs a
Trainer sets up first."""

from __future__ import annotations

import logging
import warnings

__all__ = ["quiet_lightning"]


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return "Tip:" not in msg and "Skipping setting a default" not in msg


def quiet_lightning() -> None:
    """One copy of each Lightning log line, without advertisements or known-harmless warnings.

    Lightning adds its own stderr handler when it is imported before logging is configured (as
    under Hydra), so each line printed twice; with the handler removed, its records go to the
    root handlers (console and ``<run dir>/train.log``) once.
    """
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            if type(h) is logging.StreamHandler:
                lg.removeHandler(h)
        if logging.getLogger().handlers:
            lg.propagate = True
        if not any(isinstance(f, _DropTips) for f in lg.filters):
            lg.addFilter(_DropTips())
    for lg in (logging.getLogger("lightning.pytorch.utilities.rank_zero"), logging.getLogger("lightning.fabric.utilities.rank_zero")):
        if not any(isinstance(f, _DropTips) for f in lg.filters):
            lg.addFilter(_DropTips())
    # torch >= 2.10 deprecates LeafSpec, which Lightning 2.6 still uses internally.
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
