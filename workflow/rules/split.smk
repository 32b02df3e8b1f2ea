# A between-workflow cache candidate like convert (see convert.smk): keyed by convert's provenance,
# the split settings and the code of the modules it imports.
rule split:
    input:
        samples=rules.convert.output.samples,
    output:
        split="results/{dataset}/split/splits.json",
    log:
        "logs/{dataset}/split.log",
    cache: True
    conda:
        "../../envs/io.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        settings=get_settings("split"),
        code=get_code_checksum("split.py"),
    script:
        "../scripts/split.py"
