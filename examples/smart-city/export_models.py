"""Export the smart-city models (torchvision architectures, random weights) to ONNX; run once, commit the output.

    pip install torch==2.14.1 torchvision==0.29.1   # only for this script; tierplan never imports torch
    python examples/smart-city/export_models.py     # writes detector.onnx and classifier.onnx next to it

- detector.onnx: SSDlite320 with a MobileNetV3-Large backbone. Input ``frame``: 1x320x320x3 uint8
  RGB (the camera's stream as it arrives; the cast and normalisation are in the graph). Outputs
  ``boxes`` (1x3234x4, x1 y1 x2 y2 in frame pixels, decoded against the model's anchors) and
  ``scores`` (1x3234x91, softmax over the COCO classes, 0 = background). torchvision's
  post-processing (score threshold, per-class NMS, top-k) has data-dependent shapes, so it is left
  out of the graph and done on the host by `tierplan.transforms:crop_detections`.
- classifier.onnx: MobileNetV3-Small with 8 classes (`CLASSES`). Input ``crop``: batchx3x224x224
  float32, ImageNet-normalised; output ``class_probs``: batchx8 softmax. The batch dimension is
  dynamic (``batch``): app.yaml binds it to 1 for planning and partitioning, and a batching site
  (the cloud tier) runs the classifier's pieces with it freed again (runtime/batchdim.py), so a
  frame's crops are classified in batches there.

Weights are random (seeded), so outputs are meaningless but shapes, operators, FLOPs and run
times are those of the real networks, which is what planning and execution need. Batch-norm
statistics are calibrated on random inputs before export: with torchvision's fresh running
statistics the activations of an untrained network fade to zero and every output would be a
constant (uniform scores, boxes equal to the anchors).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn
from torchvision.models import mobilenet_v3_small
from torchvision.models.detection import ssdlite320_mobilenet_v3_large
from torchvision.models.detection.image_list import ImageList

__all__ = ["Detector", "Classifier", "export", "calibrate_batchnorm", "CLASSES", "FRAME_SIDE_PX", "CROP_SIDE_PX", "OPSET"]

FRAME_SIDE_PX = 320        # SSDlite320's native input side
CROP_SIDE_PX = 224         # MobileNetV3's native input side
CLASSES = ("car", "van", "truck", "bus", "motorcycle", "bicycle", "pedestrian", "other")
OPSET = 17
MAX_FILE_MB = 15.0         # committed model files stay below this
SEED = 0
CALIBRATION_BATCHES = 8    # random batches that set the batch-norm running statistics
CALIBRATION_BATCH_SIZE = 4


class Detector(nn.Module):
    """SSDlite320-MobileNetV3-Large without its data-dependent post-processing."""

    def __init__(self) -> None:
        super().__init__()
        ssd = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None).eval()
        self.backbone, self.head, self.box_coder = ssd.backbone, ssd.head, ssd.box_coder
        probe = torch.zeros(1, 3, FRAME_SIDE_PX, FRAME_SIDE_PX)
        with torch.no_grad():
            features = list(ssd.backbone(probe).values())
            anchors = ssd.anchor_generator(ImageList(probe, [(FRAME_SIDE_PX, FRAME_SIDE_PX)]), features)[0]
        self.register_buffer("anchors", anchors)
        self.register_buffer("mean", torch.tensor(ssd.transform.image_mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(ssd.transform.image_std).view(1, 3, 1, 1))

    def forward(self, frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = frame.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        x = (x - self.mean) / self.std
        out = self.head(list(self.backbone(x).values()))
        boxes = self.box_coder.decode_single(out["bbox_regression"][0], self.anchors)
        return boxes.unsqueeze(0), torch.softmax(out["cls_logits"], dim=-1)


class Classifier(nn.Module):
    """MobileNetV3-Small over `CLASSES`, returning probabilities."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mobilenet_v3_small(weights=None, num_classes=len(CLASSES)).eval()

    def forward(self, crop: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(crop), dim=-1)


def calibrate_batchnorm(module: nn.Module, example: torch.Tensor) -> nn.Module:
    """Set every batch-norm layer's running mean and variance from random inputs shaped like `example`."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None          # cumulative average over the calibration batches
    module.train()
    shape = (CALIBRATION_BATCH_SIZE, *example.shape[1:])
    with torch.no_grad():
        for _ in range(CALIBRATION_BATCHES):
            if example.dtype == torch.uint8:
                module(torch.randint(0, 256, shape, dtype=torch.uint8))
            else:
                module(torch.randn(shape))
    return module.eval()


def export(out_dir: Path) -> list[Path]:
    """Write detector.onnx and classifier.onnx to `out_dir`; refuse files over MAX_FILE_MB."""
    torch.manual_seed(SEED)
    written = []
    jobs = [
        (Detector(), torch.zeros(1, FRAME_SIDE_PX, FRAME_SIDE_PX, 3, dtype=torch.uint8), "detector.onnx",
         ["frame"], ["boxes", "scores"], None),
        (Classifier(), torch.zeros(1, 3, CROP_SIDE_PX, CROP_SIDE_PX), "classifier.onnx",
         ["crop"], ["class_probs"], {"crop": {0: "batch"}, "class_probs": {0: "batch"}}),
    ]
    for module, example, name, inputs, outputs, dynamic in jobs:
        path = out_dir / name
        calibrate_batchnorm(module, example)
        with torch.no_grad():
            torch.onnx.export(module.eval(), (example,), str(path), input_names=inputs, output_names=outputs,
                              dynamic_axes=dynamic, opset_version=OPSET, do_constant_folding=True, dynamo=False)
        size_mb = path.stat().st_size / 1e6
        if size_mb > MAX_FILE_MB:
            path.unlink()
            raise SystemExit(f"{path}: {size_mb:.1f} MB exceeds {MAX_FILE_MB} MB; not written")
        print(f"wrote {path} ({size_mb:.1f} MB)")
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="Directory to write the ONNX files to (default: next to this script).")
    export(parser.parse_args().out)


if __name__ == "__main__":
    main()
