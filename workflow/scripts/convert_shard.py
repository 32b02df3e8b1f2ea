from snakescope.convert import convert_shard
from snakescope.logs import log_to_file

log_to_file(snakemake.log[0])
convert_shard(
    settings=snakemake.params.settings,
    shard=snakemake.params.shard,
    shards=snakemake.params.shards,
    shard_size=snakemake.params.shard_size,
    shard_out=snakemake.output[0],
)
