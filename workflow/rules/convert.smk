rule convert:
    input:
        get_dataset_files,
    output:
        arrays="results/{dataset}/convert/arrays.npz",
        samples="results/{dataset}/convert/samples.tsv",
        fingerprint="results/{dataset}/convert/fingerprint.json",
    log:
        "logs/{dataset}/convert.log",
    benchmark:
        "benchmarks/{dataset}/convert.tsv"
    params:
        settings=get_settings("convert"),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/io.yaml"
    script:
        "../scripts/convert.py"
