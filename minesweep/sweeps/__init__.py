"""Sweeps at cluster scale: what Hydra's Optuna sweeper and submitit launchers need from minesweep.

One idea per module:

- ``storage``: where an Optuna study lives (a journal file, SQLite, or a database URL).
- ``search_space``: ``objective_weights``, the ``custom_search_space`` that searches the weights of the
  objectives a trial actually trains with.
- ``optuna_sweeper``: the ``hydra/sweeper=optuna_study`` plugin: trials are Hydra jobs, pruned and failed
  jobs are recorded as such, the study is resumed from its storage.
- ``trial``: the job's side of an Optuna trial (find it, report to it, finish it).
- ``pruning``: a Lightning callback that reports validation loss to the trial and stops pruned trials.
- ``launcher``: the ``hydra/launcher=slurm|local`` plugins: a requeued job resumes from its own
  ``last.ckpt``; a job that dies is a failed job, not a dead sweep.
- ``jobs``: the Hydra callback that records each job in its folder (``job.json``: state, timing, restarts,
  metrics; ``error.log``: the traceback of a failed job) and tells an Optuna trial its outcome.
- ``report``: ``minesweep-sweep-report SWEEP_DIR``: a table and a PNG of a sweep.

Training imports nothing from here: pruning is a callback and the job record a Hydra callback, both chosen in
config (conf/train.yaml); the SLURM environment and the DDP strategy check live in ``minesweep.cluster``.
"""
