# Training stage. A run is keyed by the hash of its resolved config (seed excluded): every experiment that resolves
# to the same config shares results/runs/<hash>/seed<k>/ (layout.RUN_DIR), so each unique (config, seed) trains once.


rule train:
    # `itrbench train` trains, then evaluates every protocol of the config into metrics.json. checkpoint.pt is not a
    # declared output, so a killed job leaves it behind and the re-run resumes from it when the config, data, text
    # caches and code it records still match; a finished run whose job runs again (--forcerun, new data) retrains.
    input:
        unpack(train_inputs),
    output:
        metrics=layout.RUN_METRICS,
        # the resolved run config (base + overrides + seed) `itrbench train` reads: written by this job's shell,
        # not by a job of its own (one trivial job per run was a quarter of the DAG)
        config=layout.RUN_CONFIG,
    params:
        run_dir=layout.RUN_DIR,
        text=lambda w: reg.run_config_text(PLAN.by_hash[w.hash], int(w.seed)),
        itrbench=itrbench_command,
    benchmark:
        "results/benchmarks/train/{hash}.seed{seed}.tsv",
    log:
        layout.RUN_LOG,
    threads: train_res("threads")
    resources:
        # per (method, data set) from resources.train_cost (else resources.train), times the attempt: a retry
        # (profile `retries`) resumes from the epoch checkpoint, and a job killed at its time or memory limit gets more
        mem_mb=train_cost("mem_mb"),
        runtime=train_cost("runtime"),
        gpu=train_res("gpus"),
        cpus_per_gpu=max(1, train_res("threads") // max(1, train_res("gpus"))),  # SLURM: --cpus-per-gpu on GPU jobs
    conda:
        "../../environment.yml"
    shell:
        "printf '%s' {params.text:q} > {output.config} && {params.itrbench} train --config {output.config} --out {params.run_dir} > {log} 2>&1"


onerror:
    print_job_errors(log)
