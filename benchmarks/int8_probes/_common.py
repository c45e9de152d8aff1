"""What the probes share: a run's deployed model and the export's own 200 calibration images."""
import json
from pathlib import Path

import numpy as np

from mstl.data.splits import stratified_sample
from mstl.edge.core.filelist import read_list
from mstl.edge.core.preprocess import Preprocess
from mstl.model import load_classifier


def calibration_pixels(run: Path, n: int = 200) -> np.ndarray:
    trs, trl = read_list(run / "target_train.tsv")
    return Preprocess(150, "bilinear").load_many([trs[i] for i in stratified_sample(np.asarray(trl), n, 0)])


def deployed(run: Path):
    return load_classifier(run / json.loads((run / "selection.json").read_text())["model"])
