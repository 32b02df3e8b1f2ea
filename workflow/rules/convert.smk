# convert and split are between-workflow cache candidates (`--cache` with $SNAKEMAKE_OUTPUT_CACHE; the
# profiles turn it on when that variable is set). The cache key covers the input files' content, the
# params and the rule's script, but the script is a thin wrapper: `code` adds a checksum of every package
# module it imports (inside functions too), so that a change there re-runs the rule instead of reusing
# stale cached outputs.
# No `benchmark:`: Snakemake forbids it on cached rules (a cache hit has no run time to record).
rule convert:
    input:
        get_dataset_files,
    output:
        arrays=directory("results/{dataset}/convert/arrays.zarr"),
        samples="results/{dataset}/convert/samples.tsv",
        fingerprint="results/{dataset}/convert/fingerprint.json",
    log:
        "logs/{dataset}/convert.log",
    cache: True
    conda:
        "../../envs/io.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        settings=get_settings("convert"),
        code=get_code_checksum("convert.py"),
    script:
        "../scripts/convert.py"
