"""Experiments: one YAML file states a question, the pipeline answers it (docs/experiments.md).

``spec`` reads and checks the file and expands its cells, ``plan`` turns the cells into the pipeline's own stages
(shared where their inputs agree, keyed by params, code and data so that a rerun skips what is done), ``report``
computes the answer from the cells' scores. The Prefect flow that runs a plan is ``flows/experiment.py``.
"""
