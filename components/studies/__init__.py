"""The SimCLR paper's ablation studies (sections 3-5) as named grids run on Ray Tune.

- :mod:`~components.studies.grids`: each study as data (its axes, levels and overrides) and
  its expansion into trials at a scale (``study.scale``: smoke, small, full).
- :mod:`~components.studies.plan`: one study at one configuration: every trial's validated
  configuration and the experiment's name (what a restart finds again).
- :mod:`~components.studies.probe`: a trial encoder's validation scores (linear probe on h,
  and on z where the study asks; kNN).
- :mod:`~components.studies.trial`: the Ray Tune trainable: the shared pretraining loop in one
  process, checkpoints through Tune, then the probes.
- :mod:`~components.studies.tracking`: one MLflow parent run per study, a child run per trial;
  :mod:`~components.studies.callback` logs each trial from Tune's driver as it runs.
- :mod:`~components.studies.report`: the results table, the plot and ``results.json``.
- :mod:`~components.studies.runner`: the Tune experiment (start or restore) and the above.
- :mod:`~components.studies.commands`: ``simclr study NAME``.

Everything here chooses and reports on the validation split only (``data/subsets/val.txt``);
no study reads a test label.
"""
