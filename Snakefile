# itrbench pipeline: data -> text caches / concepts -> train -> per-experiment records -> tables -> figures.
#
#   snakemake --cores all tables figures  # default config: results/default/{tables,figures}, copied to tables/, figures/
#   snakemake --cores all                 # default target `all`: results/<config>/{tables,figures} only (no copy)
#   snakemake --cores 2 all --configfile workflow/config/tiny.yaml   # targets BEFORE --configfile (it takes several values)
#   snakemake all --configfile workflow/config/paper.yaml --profile workflow/profiles/slurm   # real data on SLURM
#   snakemake --report report.html        # one config's tables (inline) and figures with captions
#
# Config: workflow/config/default.yaml unless --configfile is given (a given file replaces it, it is not merged);
# checked against workflow/config/schema.yaml. Experiments: workflow/experiments.yaml. See docs/pipeline.md.

report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


# `--configfile` takes several values, so a target written after it is read as a config file (Snakemake stops on
# that before this file runs when the target is a folder, e.g. `tables`). Caught here: a config file written where a
# target belongs. The targets are not known yet while this file is read, hence the command line itself.
for _target in config_files_given_as_targets(sys.argv[1:]) if os.path.basename(sys.argv[0]) == "snakemake" else []:
    raise WorkflowError(f"{_target} is a config file given as a target: write targets before --configfile, e.g. "
                        f"snakemake --cores 2 all --configfile {_target}")


onsuccess:
    print(f"itrbench: config {WF['name']}: tables in {OUT}/tables/, figures in {OUT}/figures/"
          + (" (the `tables` / `figures` targets copy them to tables/, figures/)" if WF["publish"] else ""))


wildcard_constraints:
    hash=r"[0-9a-f]{16}",
    seed=r"\d+",
    method=one_of(METHOD_NAMES),
    experiment=r"[a-z0-9][a-z0-9_.+-]*(/[a-z0-9][a-z0-9_.+-]*)*",
    table=one_of(REGISTRY["tables"]),
    figure=one_of(REGISTRY["figures"]),


rule all:
    # this config's results only; the committed copies are written by the explicit targets `tables` and `figures`
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
