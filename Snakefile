# itrbench pipeline: data -> text caches / concepts -> train -> per-experiment records -> tables -> figures.
#
#   snakemake --cores all                 # default target `all` = tables + figures, toy config on CPU
#   snakemake --cores all tables          # only the tables
#   snakemake --configfile workflow/config/paper.yaml --profile workflow/profiles/slurm   # real data on SLURM
#   snakemake --report report.html        # tables and figures with captions
#
# Config: workflow/config/default.yaml unless --configfile is given (a given file replaces it, it is not merged);
# checked against workflow/config/schema.yaml. Experiments: workflow/experiments.yaml. See docs/pipeline.md.

report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


wildcard_constraints:
    hash=r"[0-9a-f]{16}",
    seed=r"\d+",
    method=one_of(METHOD_NAMES),
    experiment=r"[a-z0-9][a-z0-9_.+-]*(/[a-z0-9][a-z0-9_.+-]*)*",
    table=one_of(REGISTRY["tables"]),
    figure=one_of(REGISTRY["figures"]),


rule all:
    default_target: True
    input:
        table_outputs(),
        figure_outputs(),


include: "workflow/rules/data.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/concepts.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/bench.smk"
