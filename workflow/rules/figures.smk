# Figures, one house style (itrbench.report.figures), built from the experiments' metrics.json records, under
# results/<config name>/figures/. `figures` also publishes them to figures/ (config `publish`).


localrules:
    figure,
    figures,


rule figure:
    input:
        unpack(figure_inputs),
    output:
        report(layout.figure_file(WF["name"]), caption="../report/figure.rst", category="Figures",
               labels={"figure": "{figure}", "config": WF["name"]}),
    params:
        title=figure_caption,
        seeds=PLAN.seeds,
        name=WF["name"],
        scale=WF["scale"],
    benchmark:
        "results/benchmarks/figure/{figure}.tsv",
    log:
        f"results/logs/{WF['name']}/figures/{{figure}}.log",
    conda:
        "../../environment.yml"
    shell:
        "itrbench figure {wildcards.figure} --registry {input.registry} --paper-numbers {input.paper}"
        " --metrics {input.metrics} --seeds {params.seeds} --config-name {params.name} --scale {params.scale}"
        " --out {output} > {log} 2>&1"


if WF["publish"]:

    rule publish_figure:
        # The committed copy: only a config with `publish: true` (the default) writes figures/.
        input:
            layout.figure_file(WF["name"]),
        output:
            "figures/{figure}.png",
        benchmark:
            "results/benchmarks/publish_figure/{figure}.tsv"
        log:
            "results/logs/publish/figures/{figure}.png.log",
        localrule: True
        conda:
            "../../environment.yml"
        shell:
            "cp {input} {output} 2> {log}"


rule figures:
    input:
        figure_outputs(),
        published_figures(),
