from snakescope.augment import write_plan_and_preview
from snakescope.logs import log_to_file
from snakescope.planner import apply_plan

log_to_file(snakemake.log[0])
write_plan_and_preview(
    settings=apply_plan(snakemake.params.settings, snakemake.input.recommendation),
    fingerprint_json=snakemake.input.fingerprint,
    arrays_store=snakemake.input.arrays,
    split_json=snakemake.input.split,
    plan_out=snakemake.output.plan,
    preview_out=snakemake.output.preview,
)
