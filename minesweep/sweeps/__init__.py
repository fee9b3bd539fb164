"""Sweeps at cluster scale: what Hydra's Optuna sweeper and submitit launchers need from minesweep.

One idea per module:

- ``storage``: where an Optuna study lives (a journal file, SQLite, or a database URL).
- ``search_space``: ``objective_weights``, the ``custom_search_space`` that searches the weights of the
  objectives a trial actually trains with.
- ``optuna_sweeper``: the ``hydra/sweeper=optuna_study`` plugin: trials are Hydra jobs, pruned and failed
  jobs are recorded as such, the study is resumed from its storage.
- ``trial``: the job's side of an Optuna trial (find it, report to it, finish it).
- ``pruning``: a Lightning callback that reports validation loss to the trial and stops pruned trials.
- ``preemption``: checkpoint on submitit's signal before a time limit or preemption; leave requeueing
  to submitit (Lightning's own SLURM auto-requeue is turned off).
- ``launcher``: the ``hydra/launcher=slurm|local`` plugins: a requeued job resumes from its own
  ``last.ckpt``; a job that dies is a failed job, not a dead sweep.
- ``ddp``: refuses a DDP strategy that cannot work where the job runs (plain ``ddp`` in a local multirun).
- ``jobs``: the record each job leaves in its folder (``job.json``: state, timing, restarts, metrics;
  ``error.log``: the traceback of a failed job).
- ``hooks``: the few lines ``minesweep.train`` calls.
- ``report``: ``minesweep-sweep-report SWEEP_DIR``: a table and a PNG of a sweep.

Modules import Optuna, submitit and matplotlib lazily: ``minesweep.train`` stays light for single runs.
"""
