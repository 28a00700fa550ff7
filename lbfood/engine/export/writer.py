"""Write a `Detector` as ONNX (metadata in `metadata_props`) or TorchScript (metadata in the extra
file `lbfood.json`), with a dynamic batch dimension; files are written atomically."""

from __future__ import annotations

import io
import json
import os
import warnings

import torch
from torch import nn

from lbfood.engine.errors import ConfigError
from lbfood.engine.io import atomic_write_bytes

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
INPUT, OUTPUTS = "images", ("logits", "score", "is_id")
EXTRA_FILE = "lbfood.json"  # TorchScript: the metadata, a JSON object of strings
ONNX_OPSET = 17


def write(detector: nn.Module, example: torch.Tensor, path: str | os.PathLike, fmt: str,
          metadata: dict[str, str]) -> int:
    """Write `detector` traced on `example` to `path` as `fmt`; returns the file's size in bytes."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown --format {fmt!r}; valid: {', '.join(FORMATS)}")
    data = (onnx_bytes if fmt == "onnx" else torchscript_bytes)(detector, example, metadata)
    atomic_write_bytes(path, data)
    return len(data)


def is_detector(path: str | os.PathLike) -> bool:
    """Is `path` a detector lbfood exported (its metadata names lbfood's version)? `export` replaces only those."""
    import zipfile

    path = os.fspath(path)
    try:
        if zipfile.is_zipfile(path):  # TorchScript
            with zipfile.ZipFile(path) as z:
                return any(n.endswith(f"extra/{EXTRA_FILE}") for n in z.namelist())
        import onnx

        proto = onnx.load(path, load_external_data=False)
        return any(e.key == "lbfood_version" for e in proto.metadata_props)
    except Exception:  # noqa: BLE001 - anything unreadable is not lbfood's detector
        return False


def onnx_bytes(detector: nn.Module, example: torch.Tensor, metadata: dict[str, str]) -> bytes:
    """The ONNX model (TorchScript-based exporter: it needs no onnxscript), batch axis dynamic."""
    import onnx

    buf = io.BytesIO()
    outputs = getattr(detector, "outputs", OUTPUTS)  # + far_score with the far-OOD gate
    dynamic = {name: {0: "batch"} for name in (INPUT, *outputs)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notes
        torch.onnx.export(detector, (example,), buf, dynamo=False, input_names=[INPUT],
                          output_names=list(outputs), dynamic_axes=dynamic, opset_version=ONNX_OPSET,
                          do_constant_folding=True)
    proto = onnx.load_from_string(buf.getvalue())
    for k, v in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    return proto.SerializeToString()


def torchscript_bytes(detector: nn.Module, example: torch.Tensor, metadata: dict[str, str]) -> bytes:
    """The traced module with the metadata as the extra file `lbfood.json`."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer notes on constants (the baked statistics), deprecation
        traced = torch.jit.trace(detector, (example,), check_trace=False)
        torch.jit.save(traced, buf, _extra_files={EXTRA_FILE: json.dumps(metadata, indent=1)})
    return buf.getvalue()
