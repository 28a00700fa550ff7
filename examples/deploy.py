"""Classify a folder of images with a detector written by `lbfood export` (onnxruntime, numpy, PIL only).

    lbfood export --model runs/latest --method react --out detector.onnx
    python examples/deploy.py detector.onnx photos/     # prints: file, class, score, ID or OOD

is_id already includes lbfood score's far-OOD gate (its score is the optional output far_score) unless
the file was exported with --no-far-gate.

An unreadable file gets a line on stderr and the exit code 1; the others are still classified.

Images are prepared as `lbfood score` prepares them: RGB, the shorter side resized (bilinear) to the
run's input size S (to round(S·256/224) when S > 64), then the centre S×S crop, as uint8.
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image


def load(path, size):
    img = Image.open(path)
    if img.mode.startswith("I"):  # 16-bit grayscale: scaled as lbfood does (PIL's convert clips it)
        a = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        img = Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8))
    img = img.convert("RGB")
    w, h = img.size
    short = size if size <= 64 else int(round(size * 256 / 224))
    new_w, new_h = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BILINEAR)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return np.asarray(img)[top:top + size, left:left + size]


def main(model, folder, batch=64):
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map  # classes, threshold, input_size, layout, ...
    size, classes = int(meta["input_size"]), json.loads(meta["classes"])
    if "image_extensions" not in meta:
        print(f"{model} predates the image_extensions metadata: export it again with `lbfood export`", file=sys.stderr)
        return 1
    exts = tuple(json.loads(meta["image_extensions"]))  # the files `lbfood score` reads: .gif and .tif too
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in exts and not p.name.startswith("."))
    if not files:
        print(f"no images ({', '.join(exts)}) under {folder!r}", file=sys.stderr)
        return 1
    failed = 0
    for i in range(0, len(files), batch):
        good, arrays = [], []
        for p in files[i:i + batch]:
            try:
                arrays.append(load(p, size))  # (S, S, 3) uint8
                good.append(p)
            except OSError as e:  # missing, unreadable or not an image
                print(f"{p}\terror: {e}", file=sys.stderr)
                failed += 1
        if not good:
            continue
        x = np.stack(arrays)
        if meta["layout"] == "NCHW":
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        logits, score, is_id = session.run(["logits", "score", "is_id"], {"images": x})
        for p, lg, s, ok in zip(good, logits, score, is_id, strict=True):
            print(f"{p}\t{classes[int(lg.argmax())]}\t{s:.4f}\t{'ID' if ok else 'OOD'}")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python deploy.py DETECTOR.onnx FOLDER")
    sys.exit(main(*sys.argv[1:3]))
