# convert and split are between-workflow cache candidates (`--cache` with $SNAKEMAKE_OUTPUT_CACHE; the
# profiles turn it on when that variable is set). The cache key covers the input files' content, the
# params and the rule's script, but the script is a thin wrapper: `code` adds a checksum of every package
# module it imports (inside functions too), so that a change there re-runs the rule instead of reusing
# stale cached outputs.
# No `benchmark:`: Snakemake forbids it on cached rules (a cache hit has no run time to record).
#
# A dataset of more than convert_shard_size samples is read by convert_shard jobs, one per shard, each
# cached on its own; convert then gathers them (snakescope.convert.shards). A smaller one is read by
# convert itself.
rule convert_shard:
    input:
        get_shard_files,
    output:
        directory("results/{dataset}/convert/shards/{shard}"),
    log:
        "logs/{dataset}/convert_shard{shard}.log",
    wildcard_constraints:
        shard=r"\d+",
    cache: True
    conda:
        "../../envs/io.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        settings=get_settings("convert"),
        shard=lambda wildcards: int(wildcards.shard),  # in the cache key: shards differ by position too
        shards=lambda wildcards: len(get_convert_shards(wildcards.dataset)),
        shard_size=lambda wildcards: DATASETS[wildcards.dataset]["convert_shard_size"],
        code=get_code_checksum("convert_shard.py"),
    script:
        "../scripts/convert_shard.py"


rule convert:
    input:
        unpack(get_convert_input),
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
