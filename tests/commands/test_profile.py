"""``python -m cnnframe profile CONFIG``: the table, its options, and user errors."""
import re

from cnnframe.cli import main

CONFIG = """
data: {dataset: synthetic, samples: 30, shape: [1, 6, 6], classes: 3, test_size: 0.2, val_fraction: 0.0}
model:
  layers:
    - {type: conv2d, out_channels: 4, kernel_size: 3}
    - {type: relu}
    - {type: globalavgpool2d}
    - {type: dense, out_features: 3}
trainer: {batch_size: 6, threads: 1, early_stopping: {monitor: train_loss}, checkpoint: {monitor: train_loss}}
"""


def write(tmp_path, text=CONFIG):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return str(path)


def test_table_has_a_row_per_layer_and_shares_sum_to_100(tmp_path, capsys):
    code = main(["profile", write(tmp_path), "--batches", "2", "--warmup", "1", "--threads", "1",
                 "--set", "trainer.batch_size=5"])
    out = capsys.readouterr().out
    assert code == 0
    rows = [line for line in out.splitlines() if re.match(r"\s*\d+\s+\w", line)]
    assert [r.split()[1] for r in rows] == ["Conv2D", "ReLU", "GlobalAvgPool2D", "Dense"]
    lines = out.splitlines()
    step = next(i for i, line in enumerate(lines) if line.split()[:1] == ["step"])
    shares = [float(t[:-1]) for line in lines[3:step] for t in line.split() if t.endswith("%")]
    assert len(shares) == 4 + 3  # layers, data, loss, optimizer
    assert abs(sum(shares) - 100.0) < 0.5 and "100.0%" in lines[step]
    assert "batch 5, mean of 2 steps" in out and "1 thread " in out
    for stage in ("data", "loss", "optimizer", "step"):
        assert re.search(rf"^\s+{stage}\s", out, re.M)


def test_bad_config_and_options_exit_2(tmp_path, capsys):
    assert main(["profile", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["profile", write(tmp_path, CONFIG.replace("relu", "rleu"))]) == 2
    assert "did you mean 'relu'" in capsys.readouterr().err
    assert main(["profile", write(tmp_path), "--batches", "0"]) == 2
    assert "--batches must be >= 1" in capsys.readouterr().err
    assert main(["profile", write(tmp_path), "--threads", "0"]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err
