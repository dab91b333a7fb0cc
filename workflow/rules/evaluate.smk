# Evaluation stage. `itrbench train` already evaluates every protocol of a run (metrics.json); here each experiment
# gets its own record under results/<dataset>/<method>/<experiment>/seed<k>/ (SPEC §5; itrbench.experiments.layout):
# a copy of the shared run's metrics.json and of the run config it trained from (config.yaml), and run.json, which points at the hash-keyed run
# folder. Few jobs write them all: one rule per group of record_jobs() (common.smk), its records listed as outputs.


for _job in record_jobs():

    rule:
        name:
            _job["name"]
        input:
            metrics=[r.path(rules.train.output.metrics) for r in _job["runs"]],
            config=[r.path(rules.train.output.config) for r in _job["runs"]],
        output:
            [r.path(template) for r in _job["runs"] for template in layout.RECORD_FILES],
        params:
            script=_job["script"],
        benchmark:
            f"results/benchmarks/records/{_job['stem']}.tsv"
        log:
            f"results/logs/records/{_job['stem']}.log",
        localrule: True
        conda:
            "../../environment.yml"
        shell:
            "({params.script}) 2> {log}"


rule alignment_uniformity:
    # `itrbench alignment-uniformity` measures alignment and uniformity of a trained run's embeddings (SPEC §4.3),
    # for the figures that declare `needs: [{input: alignment_uniformity}]` in experiments.yaml (AsCL Fig. 4).
    input:
        layout.RECORD_POINTER,
    output:
        layout.RECORD_EXTRAS["alignment_uniformity"],
    params:
        run_dir=lambda w: experiment_run(w).run_dir,
    benchmark:
        "results/benchmarks/alignment_uniformity/{dataset}/{method}/{experiment}/seed{seed}.tsv",
    log:
        "results/logs/experiments/{dataset}/{method}/{experiment}/seed{seed}.alignment_uniformity.log",
    wildcard_constraints:
        dataset=one_of(experiment_datasets()),
    threads: WF["resources"]["prepare"]["threads"]
    resources:
        mem_mb=WF["resources"]["prepare"]["mem_mb"],
        runtime=WF["resources"]["prepare"]["runtime"],
    conda:
        "../../environment.yml"
    shell:
        "itrbench alignment-uniformity --run {params.run_dir} --out {output} > {log} 2>&1"
