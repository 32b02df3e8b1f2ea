from snakescope.logs import log_to_file
from snakescope.split import write_split

log_to_file(snakemake.log[0])
write_split(
    samples_tsv=snakemake.input.samples,
    settings=snakemake.params.settings,
    split_out=snakemake.output.split,
)
