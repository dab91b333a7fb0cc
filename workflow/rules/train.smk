# Training stage. A run is keyed by the hash of its resolved config (seed excluded): every experiment that resolves
# to the same config shares results/runs/<hash>/seed<k>/, so each unique (config, seed) trains exactly once.


localrules:
    run_config,


rule run_config:
    # The resolved run config (base + overrides + seed) that `itrbench train` reads. Written by the shell: a `run:`
    # block would cost a whole Snakemake start-up per job.
    output:
        "results/runs/{hash}/config.seed{seed}.yaml",
    params:
        text=lambda w: reg.run_config_text(PLAN.by_hash[w.hash], int(w.seed)),
    benchmark:
        "results/benchmarks/run_config/{hash}.seed{seed}.tsv",
    log:
        "results/runs/{hash}/config.seed{seed}.log",
    conda:
        "../../environment.yml"
    shell:
        "printf '%s' {params.text:q} > {output} 2> {log}"


rule train:
    # `itrbench train` trains, then evaluates every protocol of the config into metrics.json. checkpoint.pt is not a
    # declared output, so a killed job leaves it behind and the re-run resumes from it when the config, data, text
    # caches and code it records still match; a finished run whose job runs again (--forcerun, new data) retrains.
    input:
        unpack(train_inputs),
    output:
        "results/runs/{hash}/seed{seed}/metrics.json",
    params:
        run_dir="results/runs/{hash}/seed{seed}",
        itrbench=itrbench_command,
    benchmark:
        "results/benchmarks/train/{hash}.seed{seed}.tsv",
    log:
        "results/runs/{hash}/seed{seed}/train.log",
    threads: train_res("threads")
    resources:
        mem_mb=train_res("mem_mb"),
        runtime=train_res("runtime"),
        gpu=train_res("gpus"),
    conda:
        "../../environment.yml"
    shell:
        "{params.itrbench} train --config {input.config} --out {params.run_dir} > {log} 2>&1"


onerror:
    print_job_errors(log)
