# Concepts stage (CODER): concept vocabulary, co-occurrence adjacency and word vectors, once per data set.


rule concepts:
    input:
        unpack(concept_inputs),
    output:
        directory("{concept_dir}"),
    params:
        options=concept_options,
    benchmark:
        "results/benchmarks/concepts/{concept_dir}.tsv",
    log:
        "results/logs/concepts/{concept_dir}.log",
    threads: WF["resources"]["prepare"]["threads"]
    resources:
        mem_mb=WF["resources"]["prepare"]["mem_mb"],
        runtime=WF["resources"]["prepare"]["runtime"],
    wildcard_constraints:
        concept_dir=one_of(CONCEPT_JOBS),
    conda:
        "../../environment.yml"
    shell:
        "itrbench concepts {params.options} --out {output} > {log} 2>&1"
