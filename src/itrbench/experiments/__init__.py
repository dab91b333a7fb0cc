"""Experiments: the registry (workflow/experiments.yaml) resolved into run configs and planned (`plan`), and where
every run and record lives under results/ (`layout`).

Library code, apart from the pipeline: it imports neither snakemake (only `plan.load_workflow_config` does, when
called) nor the report. The Snakefile, the `itrbench resolve / table / figure / claims` commands and the tests read
experiments through this package only, so they agree on what a run is and where it goes.
"""
