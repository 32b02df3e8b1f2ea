rule predict:
    input:
        model=rules.train.output.model,
        arrays=rules.convert.output.arrays,
        samples=rules.convert.output.samples,
        split=rules.split.output.split,
    output:
        predictions=directory("results/{dataset}/{model}/seed{seed}/predict"),
    log:
        "logs/{dataset}/{model}/seed{seed}/predict.log",
    benchmark:
        "benchmarks/{dataset}/{model}/seed{seed}/predict.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        settings=get_settings("predict"),
    script:
        "../scripts/predict.py"
