# Tables: paper-reported next to reproduced (mean ± std over seeds) with the difference, markdown + csv.


localrules:
    table,
    tables,


rule table:
    input:
        unpack(table_inputs),
    output:
        md=report("tables/{table}.md", caption="../report/table.rst", category="Tables", subcategory="{table}"),
        csv=report("tables/{table}.csv", caption="../report/table.rst", category="Tables", subcategory="{table}"),
    params:
        seeds=PLAN.seeds,
        name=WF["name"],
        scale=WF["scale"],
        title=table_caption,
    log:
        "results/logs/tables/{table}.log",
    conda:
        "../../environment.yml"
    shell:
        "itrbench table {wildcards.table} --registry {input.registry} --paper-numbers {input.paper}"
        " --metrics {input.metrics} --seeds {params.seeds} --config-name {params.name} --scale {params.scale}"
        " --md {output.md} --csv {output.csv} > {log} 2>&1"


rule tables:
    input:
        table_outputs(),
