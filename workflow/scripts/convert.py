from snakescope.convert import convert_dataset
from snakescope.logs import log_to_file

log_to_file(snakemake.log[0])
convert_dataset(
    settings=snakemake.params.settings,
    arrays_out=snakemake.output.arrays,
    samples_out=snakemake.output.samples,
    fingerprint_out=snakemake.output.fingerprint,
)
