"""One configuration measured.

- ``bench``: the measuring instrument (``Bench``, ``Bench.load``): a pipeline, its prompts and
  scorers, generating and timing under an execution mode
- ``objective``: one Optuna trial (``Objective``): apply -> warm up -> score -> time -> remove
- ``space``: the search space as Optuna parameters; identical and dominated trials
"""
