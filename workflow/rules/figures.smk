# Figures, one house style (itrbench.report.figures), built from the experiments' metrics.json records.


localrules:
    figure,
    figures,


rule figure:
    input:
        unpack(figure_inputs),
    output:
        report("figures/{figure}.png", caption="../report/figure.rst", category="Figures"),
    params:
        title=figure_caption,
    log:
        "results/logs/figures/{figure}.log",
    conda:
        "../../environment.yml"
    shell:
        "itrbench figure {wildcards.figure} --registry {input.registry} --paper-numbers {input.paper}"
        " --metrics {input.metrics} --out {output} > {log} 2>&1"


rule figures:
    input:
        figure_outputs(),
