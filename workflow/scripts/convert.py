from snakescope.convert import convert_dataset, gather_shards
from snakescope.logs import log_to_file

log_to_file(snakemake.log[0])
outputs = dict(
    arrays_out=snakemake.output.arrays,
    samples_out=snakemake.output.samples,
    fingerprint_out=snakemake.output.fingerprint,
)
if "shards" in snakemake.input.keys():  # a large dataset, read by convert_shard jobs
    gather_shards(snakemake.params.settings, list(snakemake.input.shards), **outputs)
else:
    convert_dataset(settings=snakemake.params.settings, **outputs)
