from snakescope.library import record_workflow_runs
from snakescope.logs import log_to_file

log_to_file(snakemake.log[0])
record_workflow_runs(
    leaderboard_tsv=snakemake.input.table,
    fingerprint_jsons=snakemake.input.fingerprints,
    library_path=snakemake.params.library,
    rows_out=snakemake.output.rows,
)
