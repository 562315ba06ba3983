"""Reading the tensors of a checkpoint written by another code base, without running its code.

Checkpoints of the safari family are ``torch.save`` archives: plain state dicts, or Lightning
checkpoints whose ``hyper_parameters`` and callback states hold objects of that code base's
classes (OmegaConf containers, paths, numpy scalars). ``torch.load(weights_only=True)`` refuses
those, and ``weights_only=False`` would import and call whatever the pickle names. Here the
archive is first read with ``weights_only=True``; when that refuses a class, it is read again by
an unpickler that rebuilds tensors with torch's own functions and turns every other class it
meets into an inert placeholder (:class:`Opaque`) that keeps the pickled arguments and state as
data. Nothing named in the file is imported or called, and the tensors come out the same.
"""

from __future__ import annotations

import builtins
import pickle
import types
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError

__all__ = ["Opaque", "load_foreign_checkpoint"]


class Opaque:
    """Placeholder for an object of a class the checkpoint names but this reader does not load.

    ``cls`` is ``"module.name"`` of the original class; ``args`` and ``state`` are what the
    pickle would have passed to its constructor and ``__setstate__`` (nested placeholders
    included). Tensors inside them are real tensors.
    """

    cls = "?"

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    # dict/list subclasses are rebuilt through item and append calls
    def __setitem__(self, key, value) -> None:
        self.__dict__.setdefault("items", {})[key] = value

    def append(self, value) -> None:
        self.__dict__.setdefault("appended", []).append(value)

    def extend(self, values) -> None:
        for v in values:
            self.append(v)

    def __repr__(self) -> str:
        return f"Opaque({self.cls})"


# Plain containers and numbers the pickle protocol rebuilds through their constructors.
_SAFE_BUILTINS = {"dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "str", "bytes",
                  "bytearray", "bool", "slice", "range"}
# torch functions that rebuild tensors and parameters from storages (what torch.save writes).
_TORCH_REBUILD = {
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch._tensor", "_rebuild_from_type_v2"), ("torch.nn.parameter", "Parameter"),
    ("torch", "Size"), ("torch", "device"), ("torch.storage", "UntypedStorage"),
    ("collections", "OrderedDict"),
}


def _placeholder(module: str, name: str) -> type:
    return type(name, (Opaque,), {"cls": f"{module}.{name}"})


class _InertUnpickler(pickle.Unpickler):
    """An unpickler that resolves only tensor-rebuilding globals and plain types."""

    def find_class(self, module: str, name: str):
        if module == "builtins" and name in _SAFE_BUILTINS:
            return getattr(builtins, name)
        if (module, name) in _TORCH_REBUILD:
            return pickle.Unpickler.find_class(self, module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)  # dtypes are pickled as module attributes
        return _placeholder(module, name)


# torch.load takes a pickle module; this one differs from ``pickle`` only in its Unpickler.
_INERT_PICKLE = types.SimpleNamespace(Unpickler=_InertUnpickler, load=pickle.load, __name__="inert_pickle")


def load_foreign_checkpoint(path: str | Path) -> Any:
    """The object stored in the torch archive ``path`` (see the module docstring), on the CPU.

    Raises :class:`UserError` for a missing file, a damaged (truncated) archive or a file that is
    not a torch checkpoint at all.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    with open(path, "rb") as fh:
        zip_magic = fh.read(4) == b"PK\x03\x04"  # torch.save's format since 1.6 is a zip archive
    if zip_magic:
        try:
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
        except (zipfile.BadZipFile, OSError, EOFError):
            bad = "?"  # no central directory: the end of the file is missing
        if bad is not None:
            raise UserError(f"checkpoint {path} is damaged (truncated or corrupt)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # a class outside the weights-only allowlist: read again with placeholders
    except Exception as e:  # noqa: BLE001 - anything else means the file is not a torch archive
        raise UserError(f"{path} is not a torch checkpoint that can be read ({type(e).__name__}: "
                        f"{str(e).strip().splitlines()[0][:120] if str(e).strip() else ''})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_INERT_PICKLE)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{path} is not a torch checkpoint that can be read ({type(e).__name__})") from None
