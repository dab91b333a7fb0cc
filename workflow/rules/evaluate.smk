# Evaluation stage. `itrbench train` already evaluates every protocol of a run (metrics.json); here each experiment
# gets its own record under results/<dataset>/<method>/<experiment>/seed<k>/ (SPEC §5): a copy of the shared run's
# metrics.json, the resolved config.yaml and run.json, which points at the hash-keyed run folder.


localrules:
    experiment_record,


rule experiment_record:
    input:
        lambda w: f"{experiment_run(w).run_dir}/metrics.json",
    output:
        metrics="results/{dataset}/{method}/{experiment}/seed{seed}/metrics.json",
        config="results/{dataset}/{method}/{experiment}/seed{seed}/config.yaml",
        pointer="results/{dataset}/{method}/{experiment}/seed{seed}/run.json",
    params:
        config=lambda w: reg.run_config_text(experiment_run(w).config, int(w.seed)),
        pointer=lambda w: reg.run_pointer_text(experiment_run(w)),
    benchmark:
        "results/benchmarks/experiment_record/{dataset}/{method}/{experiment}/seed{seed}.tsv",
    log:
        "results/logs/experiments/{dataset}/{method}/{experiment}/seed{seed}.log",
    wildcard_constraints:
        dataset=one_of(experiment_datasets()),
    conda:
        "../../environment.yml"
    shell:
        "(cp {input} {output.metrics} && printf '%s' {params.config:q} > {output.config}"
        " && printf '%s\\n' {params.pointer:q} > {output.pointer}) 2> {log}"


rule alignment_uniformity:
    # Hook for AsCL Fig. 4: the AsCL module's `itrbench alignment-uniformity` measures alignment and uniformity of
    # a trained run's embeddings (SPEC §4.3). The figure is built only once that command exists.
    input:
        "results/{dataset}/{method}/{experiment}/seed{seed}/run.json",
    output:
        "results/{dataset}/{method}/{experiment}/seed{seed}/alignment_uniformity.json",
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
