# Data stage: generate ToyScenes (toy scale) or check the user's precomp features (paper scale).


localrules:
    toy_options,


rule toy_options:
    # The generator's options as a file, so a changed option regenerates the data (and everything downstream).
    output:
        layout.TOY_OPTIONS,
    params:
        text=lambda w: reg.yaml_text(DATASETS[w.dataset]["toy"]),
    benchmark:
        "results/benchmarks/toy_options/{dataset}.tsv",
    log:
        "results/logs/data/{dataset}.toy_options.log",
    wildcard_constraints:
        dataset=one_of(n for n, e in DATASETS.items() if e["source"] == "toy"),
    conda:
        "../../environment.yml"
    shell:
        "printf '%s' {params.text:q} > {output} 2> {log}"


rule toy_data:
    input:
        rules.toy_options.output,
    output:
        directory("{root}/{dataset}_precomp"),
    params:
        seed=WF["toy_seed"],
    benchmark:
        "results/benchmarks/toy_data/{root}/{dataset}.tsv",
    log:
        "results/logs/data/{root}/{dataset}.toy.log",
    resources:
        mem_mb=WF["resources"]["prepare"]["mem_mb"],
        runtime=WF["resources"]["prepare"]["runtime"],
    wildcard_constraints:
        root=one_of(toy_roots()),
        dataset=one_of(n for n, e in DATASETS.items() if e["source"] == "toy"),
    conda:
        "../../environment.yml"
    shell:
        "itrbench toy --out {wildcards.root} --dataset {wildcards.dataset} --config {input} --seed {params.seed} > {log} 2>&1"


rule validate_data:
    # Real data is the user's: never written here, only checked (shapes, counts, NaN) before anything trains on it.
    input:
        real_split_files,
    output:
        layout.DATA_VALIDATED,
    params:
        root=lambda w: DATASETS[w.dataset]["root"],
        splits=lambda w: " ".join(dict.fromkeys((DATASETS[w.dataset]["train_split"], DATASETS[w.dataset]["eval_split"]))),
    benchmark:
        "results/benchmarks/validate_data/{dataset}.tsv",
    log:
        "results/logs/data/{dataset}.validate.log",
    threads: WF["resources"]["prepare"]["threads"]
    resources:
        mem_mb=WF["resources"]["prepare"]["mem_mb"],
        runtime=WF["resources"]["prepare"]["runtime"],
    wildcard_constraints:
        dataset=one_of(n for n, e in DATASETS.items() if e["source"] == "real"),
    conda:
        "../../environment.yml"
    shell:
        "itrbench validate-data --root {params.root} --dataset {wildcards.dataset} --splits {params.splits} > {output} 2> {log}"
