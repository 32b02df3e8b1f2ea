from snakescope.logs import log_to_file
from snakescope.planner import write_plan

log_to_file(snakemake.log[0])
write_plan(
    settings=snakemake.params.settings,
    fingerprint_json=snakemake.input.fingerprint,
    plan_out=snakemake.output.plan,
    table_out=snakemake.output.table,
    threads=snakemake.threads,
)
