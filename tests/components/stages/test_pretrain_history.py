"""``split_history``: the pretraining history as two files that ``dvc plots`` can render."""

from __future__ import annotations

from components.stages.pretrain import split_history


def test_rows_of_one_file_have_the_same_keys_and_the_monitor_gets_its_own():
    rows = [{"epoch": e, "step": 10 * e, "loss": 1.0 / e, "contrastive_acc": 0.1 * e,
             "images_per_s": 99.0, "resumed_from": 0, **({"pretrain_monitor_knn_top1": 0.5} if e % 2 == 0 else {})}
            for e in range(1, 5)]
    history, monitor = split_history(rows)
    assert [set(row) for row in history] == [{"epoch", "step", "loss", "contrastive_acc"}] * 4
    assert monitor == [{"epoch": 2, "pretrain_monitor_knn_top1": 0.5}, {"epoch": 4, "pretrain_monitor_knn_top1": 0.5}]
    assert split_history([]) == ([], [])
    every_epoch = [{"epoch": e, "loss": 1.0, "pretrain_monitor_knn_top1": 0.5} for e in (1, 2)]  # knn_every=1
    assert split_history(every_epoch) == ([{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 1.0}],
                                          [{"epoch": 1, "pretrain_monitor_knn_top1": 0.5}, {"epoch": 2, "pretrain_monitor_knn_top1": 0.5}])
