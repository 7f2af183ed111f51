"""What a run directory and its checkpoint say: metrics, summary, class names, preprocessing, output kind."""
import math
import os

import pytest

from cnnframe import runinfo
from cnnframe.errors import UserError


def test_read_metrics_and_summary(tmp_path):
    assert runinfo.read_metrics(str(tmp_path)) == [] and runinfo.read_summary(str(tmp_path)) is None
    (tmp_path / "metrics.csv").write_text("epoch,lr,train_loss,train_acc,val_loss,val_acc,seconds\n"
                                          "1,0.1,2.0,0.5,nan,,0.2\n"
                                          "oops,0.1,2,3,4,5,6\n"
                                          "2,0.05,1.5,0.625,1.25,0.75,0.1\n")
    rows = runinfo.read_metrics(str(tmp_path))
    assert [r["epoch"] for r in rows] == [1, 2] and isinstance(rows[0]["epoch"], int)
    assert math.isnan(rows[0]["val_loss"]) and math.isnan(rows[0]["val_acc"])  # "nan" and empty
    assert rows[1]["train_acc"] == 0.625 and rows[1]["lr"] == 0.05
    (tmp_path / "summary.json").write_text('{"status": "completed"}')
    assert runinfo.read_summary(str(tmp_path)) == {"status": "completed"}
    (tmp_path / "summary.json").write_text('{"status": ')
    with pytest.raises(UserError, match="cannot read .*summary.json"):
        runinfo.read_summary(str(tmp_path))


def image_folder_cfg(root):
    return {"data": {"dataset": "image_folder", "root": str(root), "mode": "rgb", "size": [4, 5],
                     "normalize": "unit", "seed": None, "test_size": 0.2, "val_fraction": 0.1, "augment": {"shift": 0}},
            "trainer": {"seed": 0}}


def test_class_names_from_meta_or_from_the_data_set(tmp_path):
    meta = {"data": {"num_classes": 2, "class_names": ["no", "yes"]}}
    assert runinfo.class_names(meta) == ["no", "yes"]
    assert runinfo.class_names({"data": {"num_classes": 3, "class_names": ["no", "yes"]}}) is None  # wrong length
    for name in ("b-dogs", "a-cats"):
        os.makedirs(tmp_path / name)
        (tmp_path / name / "1.png").write_bytes(b"")  # listing the folders reads no image
    cfg = image_folder_cfg(tmp_path)
    assert runinfo.class_names({"data": {"num_classes": 2}}, cfg) == ["a-cats", "b-dogs"]
    digits = {"data": {"dataset": "digits", "seed": None}, "trainer": {"seed": 0}}
    assert runinfo.class_names({"data": {"num_classes": 10}}, digits) is None  # digits: classes are 0..9
    cfg["data"]["root"] = str(tmp_path / "gone")
    assert runinfo.class_names({"data": {"num_classes": 2}}, cfg) is None  # the folder has moved: unknown
    assert runinfo.class_names({}, None) is None


def test_preprocessing_recorded_older_or_missing(tmp_path):
    from cnnframe.data import Preprocessing
    from cnnframe.errors import CheckpointError

    recorded = Preprocessing.for_images("rgb", [4, 5], offset=0.25, scale=0.5)
    meta = {"data": {"offset": 9.0, "scale": 9.0, "preprocessing": recorded.to_dict()}}
    assert runinfo.preprocessing(meta, image_folder_cfg(tmp_path)) == recorded  # the record, not the mirror
    older = {"data": {"offset": 0.5, "scale": 2.0}}  # a checkpoint from before the record: offset and scale only
    assert runinfo.preprocessing(older) == Preprocessing(0.5, 2.0)
    pre = runinfo.preprocessing(older, image_folder_cfg(tmp_path))  # ... and the decoding its data set describes
    assert (pre.offset, pre.scale) == (0.5, 2.0)
    assert pre.decode["mode"] == "rgb" and pre.decode["size"] == [4, 5] and pre.decode["kind"] == "image"
    assert runinfo.preprocessing({}) is None and runinfo.preprocessing({"data": {"name": "x"}}) is None
    with pytest.raises(CheckpointError, match="scale must be a finite number"):
        runinfo.preprocessing({"data": {"preprocessing": {"offset": 0, "scale": "big"}}})


def test_output_kind():
    assert runinfo.output_kind(None) == "probabilities"
    assert runinfo.output_kind({"loss": {"type": "cross_entropy"}}) == "probabilities"
    assert runinfo.output_kind({"loss": {"type": "mse"}}) == "raw"
