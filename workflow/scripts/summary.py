from snakescope.logs import log_to_file
from snakescope.summary import write_summary

log_to_file(snakemake.log[0])
write_summary(
    metrics_files=list(snakemake.input.metrics),
    card_files=list(snakemake.input.cards),
    uncertainty_files=list(snakemake.params.uncertainty_summaries),
    table_out=snakemake.output.table,
    figure_out=snakemake.output.figure,
)
