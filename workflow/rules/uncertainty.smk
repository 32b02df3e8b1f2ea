rule uncertainty:
    input:
        model=rules.train.output.model,
        arrays=rules.convert.output.arrays,
        samples=rules.convert.output.samples,
        split=rules.split.output.split,
    output:
        results=report(
            directory("results/{dataset}/{model}/seed{seed}/uncertainty"),
            patterns=["{name}.png"],
            caption="../report/uncertainty.rst",
            category="Uncertainty",
            labels={"dataset": "{dataset}", "model": "{model}", "seed": "{seed}"},
        ),
    log:
        "logs/{dataset}/{model}/seed{seed}/uncertainty.log",
    benchmark:
        "benchmarks/{dataset}/{model}/seed{seed}/uncertainty.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        settings=get_settings("uncertainty"),
    script:
        "../scripts/uncertainty.py"
