rule split:
    input:
        samples=rules.convert.output.samples,
    output:
        split="results/{dataset}/split/splits.json",
    log:
        "logs/{dataset}/split.log",
    params:
        settings=get_settings("split"),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/io.yaml"
    script:
        "../scripts/split.py"
