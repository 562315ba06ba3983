"""Export a model (and its tokenizer) as a self-contained Hugging Face directory.

The directory holds ``config.json`` (with an ``auto_map``), ``model.safetensors``,
``generation_config.json``, the tokenizer files and a copy of the modeling code
(``modeling_hyena_rtf.py`` and every sibling module it imports, flattened next to it). So

    AutoModelForCausalLM.from_pretrained(out_dir, trust_remote_code=True)
    AutoTokenizer.from_pretrained(out_dir, trust_remote_code=True)
    lm_eval --model hf --model_args pretrained=out_dir,trust_remote_code=True ...

work on a machine where ``hyena_rtf`` is not installed. (AutoTokenizer needs the flag too: it reads
config.json, whose model type only the shipped code defines, before the tokenizer files.)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional, Union

from ..errors import OutputExists
from ..modeling.modeling_hyena_rtf import HyenaRTFForCausalLM, register_auto_classes

__all__ = ["check_out_dir", "export_hf"]


def check_out_dir(out: Path, overwrite: bool) -> bool:
    """Whether ``out`` holds an earlier export to replace; raise if writing there would lose
    anything: a file in the way, a non-empty directory without ``overwrite``, or one that is not
    an export (no ``config.json``), so a mistyped path cannot wipe unrelated files."""
    if out.exists() and not out.is_dir():
        raise OutputExists(f"out_dir {out} exists and is not a directory")
    if not (out.is_dir() and any(out.iterdir())):
        return False
    if not overwrite:
        raise OutputExists(f"out_dir {out} is not empty; pass overwrite=True (overwrite=true on the command line) to replace it")
    if not (out / "config.json").is_file():
        raise OutputExists(f"out_dir {out} is not empty and holds no config.json; refusing to delete it")
    return True


def export_hf(
    model: HyenaRTFForCausalLM,
    tokenizer,
    out_dir: Union[str, Path],
    overwrite: bool = False,
    max_shard_size: Optional[str] = None,
) -> Path:
    """Write ``model`` (+ ``tokenizer`` unless None, + code) to ``out_dir`` and return its path.

    Refuses to write into an existing non-empty directory unless ``overwrite=True``; even then it
    only replaces a directory that looks like an earlier export (has a ``config.json``), so a
    mistyped path cannot wipe unrelated files.
    """
    if not isinstance(model, HyenaRTFForCausalLM):
        raise ValueError(f"model must be a HyenaRTFForCausalLM, got {type(model).__name__}")
    out = Path(out_dir)
    if check_out_dir(out, overwrite):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)

    register_auto_classes()
    # These write auto_map into config.json and make save_pretrained copy the code files.
    type(model.config).register_for_auto_class()
    type(model).register_for_auto_class("AutoModelForCausalLM")
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(out, **kwargs)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    _normal_modes(out)
    return out


def _normal_modes(out: Path) -> None:
    """Give every exported file the mode a plain ``open()`` would (0644 under the usual umask).

    The weights are written through a private temporary file (mode 0600) and renamed into place,
    which would leave them unreadable to anyone else sharing the export.
    """
    umask = os.umask(0)
    os.umask(umask)
    for path in out.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)
