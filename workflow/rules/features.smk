# Features stage: frozen text token features (cached once per data set and split) and, for real data, AsCL's
# ResNet-152 global image features.


rule cache_text:
    input:
        lambda w: data_ready(w.dataset),
    output:
        feats="{cache_dir}/{dataset}/{split}.caps.{encoder}.L{length}.npy",
        lengths="{cache_dir}/{dataset}/{split}.caps.{encoder}.L{length}.len.npy",
    params:
        root=lambda w: DATASETS[w.dataset]["root"],
        job=cache_job,
    benchmark:
        "results/benchmarks/cache_text/{cache_dir}/{dataset}/{split}.{encoder}.L{length}.tsv",
    log:
        "results/logs/text/{cache_dir}/{dataset}/{split}.{encoder}.L{length}.log",
    threads: WF["resources"]["prepare"]["threads"]
    resources:
        mem_mb=WF["resources"]["prepare"]["mem_mb"],
        runtime=WF["resources"]["prepare"]["runtime"],
    wildcard_constraints:
        cache_dir=one_of(str(Path(p).parent.parent) for p in CACHE_JOBS),
        dataset=one_of(DATASETS),
        split=r"[A-Za-z0-9_]+",
        length=r"\d+",
    conda:
        "../../environment.yml"
    shell:
        "itrbench cache-text --root {params.root} --dataset {wildcards.dataset} --split {wildcards.split}"
        " --encoder {params.job[encoder]} --max-length {wildcards.length} --batch-size {params.job[batch_size]}"
        " --device {params.job[device]} --threads {threads} --out {output.feats} > {log} 2>&1"


rule global_features:
    # Only for real data sets whose config names a raw image folder; otherwise {split}_global.npy must exist.
    input:
        ids="{root}/{dataset}_precomp/{split}_ids.txt",
    output:
        "{root}/{dataset}_precomp/{split}_global.npy",
    params:
        images=lambda w: images_folder(DATASETS[w.dataset]),
        pattern=lambda w: DATASETS[w.dataset]["image_pattern"],
        itrbench=itrbench_command,
    benchmark:
        "results/benchmarks/global_features/{root}/{dataset}/{split}.tsv",
    log:
        "results/logs/features/{root}/{dataset}/{split}.global.log",
    threads: WF["resources"]["prepare"]["threads"]
    resources:
        mem_mb=WF["resources"]["prepare"]["mem_mb"],
        runtime=WF["resources"]["prepare"]["runtime"],
        gpu=min(1, WF["resources"]["train"]["gpus"]),
        cpus_per_gpu=WF["resources"]["prepare"]["threads"],
    wildcard_constraints:
        root=one_of(DATASETS[n]["root"] for n in global_feature_datasets()),
        dataset=one_of(global_feature_datasets()),
        split=r"[A-Za-z0-9_]+",
    conda:
        "../../environment.yml"
    shell:
        "{params.itrbench} global-features --images {params.images:q} --ids {input.ids} --pattern {params.pattern:q}"
        " --out {output} > {log} 2>&1"
