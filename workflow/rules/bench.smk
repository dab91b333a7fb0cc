# Benchmarks (SPEC §7): each script under bench/ prints its figure (a ratio measured in one run) last.
# Not part of `all`: run `snakemake --cores all bench`. Timings want an otherwise idle machine: each script asks
# for more threads than any machine has, which Snakemake caps at --cores, so benchmarks run one at a time.


localrules:
    bench_script,
    bench,


rule bench_script:
    input:
        script=lambda w: repo_path(f"bench/{w.name}.py"),
    output:
        layout.BENCH_OUTPUT,
    wildcard_constraints:
        name=r"[A-Za-z0-9_]+",
    benchmark:
        "results/benchmarks/bench_script/{name}.tsv",
    log:
        "results/logs/bench/{name}.log",
    threads: 4096
    conda:
        "../../environment.yml"
    shell:
        "python {input.script} > {output} 2> {log}"


rule bench:
    input:
        bench_outputs(),
