# Tables: paper-reported next to reproduced (mean ± std over seeds) with the difference: markdown, csv and the HTML
# the report shows inline, under results/<config name>/tables/. `tables` also publishes them (config `publish`).


localrules:
    table,
    claims,
    tables,


rule table:
    input:
        unpack(table_inputs),
    output:
        md=layout.table_file(WF["name"], ext="md"),
        csv=layout.table_file(WF["name"], ext="csv"),
        html=report(layout.table_file(WF["name"], ext="html"), caption="../report/table.rst", category="Tables",
                    labels={"table": "{table}", "config": WF["name"]}),
    params:
        seeds=PLAN.seeds,
        name=WF["name"],
        scale=WF["scale"],
        title=table_caption,
        shared=shared_args,
    benchmark:
        "results/benchmarks/table/{table}.tsv",
    log:
        f"results/logs/{WF['name']}/tables/{{table}}.log",
    conda:
        "../../environment.yml"
    shell:
        "itrbench table {wildcards.table} --registry {input.registry} --paper-numbers {input.paper}"
        " --metrics {input.metrics} --shared {params.shared} --seeds {params.seeds} --config-name {params.name}"
        " --scale {params.scale} --md {output.md} --csv {output.csv} --html {output.html} > {log} 2>&1"


if WF["publish"]:

    rule publish_table:
        # The committed copy: only a config with `publish: true` (the default) writes tables/.
        input:
            layout.table_file(WF["name"]),
        output:
            "tables/{table}.{ext}",
        wildcard_constraints:
            table=one_of([*REGISTRY["tables"], "claims"]),
            ext="md|csv",
        benchmark:
            "results/benchmarks/publish_table/{table}.{ext}.tsv"
        log:
            "results/logs/publish/tables/{table}.{ext}.log",
        localrule: True
        conda:
            "../../environment.yml"
        shell:
            "cp {input} {output} 2> {log}"


rule claims:
    # One verdict per ablation claim of both papers (workflow/claims.yaml; docs/evaluation.md).
    input:
        unpack(claims_inputs),
    output:
        md=layout.table_file(WF["name"], "claims", "md"),
        csv=layout.table_file(WF["name"], "claims", "csv"),
    params:
        seeds=PLAN.seeds,
        name=WF["name"],
        scale=WF["scale"],
    benchmark:
        f"results/benchmarks/claims/{WF['name']}.tsv"
    log:
        f"results/logs/{WF['name']}/tables/claims.log",
    conda:
        "../../environment.yml"
    shell:
        "itrbench claims --claims {input.claims} --registry {input.registry} --paper-numbers {input.paper}"
        " --metrics {input.metrics} --seeds {params.seeds} --config-name {params.name} --scale {params.scale}"
        " --md {output.md} --csv {output.csv} > {log} 2>&1"


rule tables:
    input:
        table_outputs(),
        published_tables(),
