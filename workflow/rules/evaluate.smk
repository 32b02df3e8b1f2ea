rule evaluate:
    input:
        predictions=rules.predict.output.predictions,
        arrays=rules.convert.output.arrays,
        samples=rules.convert.output.samples,
        split=rules.split.output.split,
        fingerprint=rules.convert.output.fingerprint,
    output:
        metrics="results/{dataset}/{model}/seed{seed}/evaluate/metrics.json",
        table=report(
            "results/{dataset}/{model}/seed{seed}/evaluate/metrics.tsv",
            caption="../report/metrics.rst",
            category="Evaluation",
            labels={
                "dataset": "{dataset}",
                "model": "{model}",
                "seed": "{seed}",
                "item": "metrics",
            },
        ),
        per_sample="results/{dataset}/{model}/seed{seed}/evaluate/per_sample.tsv",
        figures=report(
            directory("results/{dataset}/{model}/seed{seed}/evaluate/figures"),
            patterns=["{name}.png"],
            caption="../report/evaluation_figures.rst",
            category="Evaluation",
            labels={
                "dataset": "{dataset}",
                "model": "{model}",
                "seed": "{seed}",
                "item": "{name}",
            },
        ),
    log:
        "logs/{dataset}/{model}/seed{seed}/evaluate.log",
    conda:
        "../../envs/io.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../scripts/evaluate.py"
