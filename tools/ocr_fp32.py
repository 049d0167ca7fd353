"""The FP32 PP-OCRv4 models as RapidOCR runs them, for the data tools (not part of quant or CI).

det: rapidocr_onnxruntime's own TextDetector (its pre-processing and DB post-processing, its
config.yaml settings), boxes sorted and cut with RapidOCR's own `sorted_boxes` and
`get_crop_img_list` (perspective crop of each quadrilateral, as RapidOCR feeds rec).
rec: the recipes' pre-processing (height 48, width padded to at least 320, capped at 1280) and
CTC greedy decoding. Needs onnxruntime, rapidocr-onnxruntime and opencv (rapidocr's dependency).
"""

from __future__ import annotations

import math
import unicodedata
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import rapidocr_onnxruntime
import yaml
from PIL import Image
from rapidocr_onnxruntime.ch_ppocr_det import TextDetector
from rapidocr_onnxruntime.main import RapidOCR

from check_ocr_data import edit_distance  # noqa: F401  (re-exported for the table script)

MODELS = Path(rapidocr_onnxruntime.__file__).parent / "models"
REC_MODEL = MODELS / "ch_PP-OCRv4_rec_infer.onnx"


def detector() -> TextDetector:
    config = yaml.safe_load((Path(rapidocr_onnxruntime.__file__).parent / "config.yaml").read_text())["Det"]
    config.update(model_path=str(MODELS / Path(config["model_path"]).name), intra_op_num_threads=1, inter_op_num_threads=1)
    return TextDetector(config)


def to_bgr(img: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(img.convert("RGB"))[:, :, ::-1])


def detect(det: TextDetector, bgr: np.ndarray) -> list[np.ndarray]:
    """Quadrilaterals (4x2 float32, clockwise from top-left) in RapidOCR's reading order."""
    boxes, _ = det(bgr)
    if boxes is None or len(boxes) == 0:
        return []
    return list(RapidOCR.sorted_boxes(boxes))


def crop_boxes(bgr: np.ndarray, boxes: list[np.ndarray]) -> list[np.ndarray]:
    # get_crop_img_list never uses `self`: call RapidOCR's own cropping without loading its models.
    return RapidOCR.get_crop_img_list(None, bgr, boxes)  # type: ignore[arg-type]


def quad_area(q: np.ndarray) -> float:
    return float(abs(cv2.contourArea(q.astype(np.float32))))


def quad_intersection(a: np.ndarray, b: np.ndarray) -> float:
    area, _ = cv2.intersectConvexConvex(a.astype(np.float32), b.astype(np.float32))
    return float(area)


def match_boxes(found: list[np.ndarray], truth: list[np.ndarray], min_iou: float = 0.5) -> list[tuple[int, int]]:
    """One-to-one greedy matching by IoU (best pairs first), the usual det recall/precision rule."""
    pairs = []
    for i, f in enumerate(found):
        for j, t in enumerate(truth):
            inter = quad_intersection(f, t)
            if inter > 0:
                iou = inter / (quad_area(f) + quad_area(t) - inter)
                if iou >= min_iou:
                    pairs.append((iou, i, j))
    used_f: set[int] = set()
    used_t: set[int] = set()
    out = []
    for _, i, j in sorted(pairs, reverse=True):
        if i not in used_f and j not in used_t:
            used_f.add(i)
            used_t.add(j)
            out.append((i, j))
    return out


class Recognizer:
    def __init__(self, model: Path = REC_MODEL) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1  # shared machine
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        dictionary = self.session.get_modelmeta().custom_metadata_map["character"].splitlines()
        self.chars = ["blank", *dictionary, " "]
        self.known = set(self.chars[1:])

    def read(self, img: Image.Image) -> str:
        img = img.convert("RGB")
        w = min(1280, max(1, math.ceil(48 * img.width / img.height)))
        x = np.zeros((1, 3, 48, max(320, w)), np.float32)
        bgr = np.asarray(img.resize((w, 48), Image.Resampling.BILINEAR), np.float32)[:, :, ::-1]
        x[0, :, :, :w] = ((bgr / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)
        probs = self.session.run(None, {self.session.get_inputs()[0].name: x})[0][0]
        ids = probs.argmax(axis=-1)
        keep = np.r_[True, ids[1:] != ids[:-1]] & (ids != 0)
        return "".join(self.chars[i] for i in ids[keep])


def normalise(text: str) -> str:
    """What the recipes' *_norm metrics compare: NFKC, spaces removed."""
    return unicodedata.normalize("NFKC", text).replace(" ", "")


def read_tsv(path: Path) -> dict[str, str]:
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        name, _, value = line.partition("\t")
        rows[name] = value
    return rows
