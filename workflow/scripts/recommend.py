from snakescope.config import resolve_datasets
from snakescope.logs import log_to_file
from snakescope.planner import write_plan

log_to_file(snakemake.log[0])
# params.settings holds what the plan depends on (a change re-plans); the full settings add the values
# the user set, which the plan lists as such.
settings = resolve_datasets(snakemake.config)[snakemake.wildcards.dataset]
write_plan(
    settings={**settings, **snakemake.params.settings},
    fingerprint_json=snakemake.input.fingerprint,
    plan_out=snakemake.output.plan,
    table_out=snakemake.output.table,
    threads=snakemake.threads,
)
